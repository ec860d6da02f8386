//! greenhub-pg against a live PostgreSQL (a throwaway cluster with SCRAM passwords): values
//! both ways, errors that leave the connection usable, transactions, the statement cache,
//! deadlines and kills that cancel the server's work, and a pool under many green threads.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use greenhub::timeout::IsTimeout;
use greenhub_pg::{Client, Error, Pool};
use greenhub_pgtest::Pg;

fn connect(pg: &Pg) -> Client {
    Client::connect(&pg.conninfo).expect("connect")
}

/// How many statements with `marker` in their text run on the server now.
fn running(observer: &mut Client, marker: &str) -> i64 {
    observer
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%' || $1 || '%' \
             AND state = 'active' AND pid <> pg_backend_pid()",
            &[&marker],
        )
        .unwrap()
        .get(0)
        .unwrap()
}

/// Waits (up to a minute: the machine may be busy) until no statement with `marker` in its
/// text runs on the server; false if one still does.
fn stops_running(observer: &mut Client, marker: &str) -> bool {
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if running(observer, marker) == 0 {
            return true;
        }
        greenhub::sleep(Duration::from_millis(20)).unwrap();
    }
    false
}

#[test]
fn values_go_and_come_back_in_their_types() {
    let pg = Pg::start();
    let t = greenhub::spawn(move || {
        let mut c = connect(&pg);
        assert!(c.parameter("server_version").is_some());
        assert!(c.backend_pid().is_some());
        let row = c
            .query_one(
                "SELECT $1::int2, $2::int4, $3::int8, $4::float8, $5::text, $6::bytea, $7::bool, \
                 $8::int4 AS nothing",
                &[
                    &-7_i16,
                    &123_456_i32,
                    &(i64::MAX - 1),
                    &2.5_f64,
                    &"héllo, 'world'",
                    &vec![0_u8, 255, 10],
                    &true,
                    &None::<i32>,
                ],
            )
            .unwrap();
        assert_eq!(row.len(), 8);
        assert_eq!(row.get::<i16>(0).unwrap(), -7);
        assert_eq!(row.get::<i32>(1).unwrap(), 123_456);
        assert_eq!(row.get::<i64>(2).unwrap(), i64::MAX - 1);
        assert_eq!(row.get::<f64>(3).unwrap(), 2.5);
        assert_eq!(row.get::<&str>(4).unwrap(), "héllo, 'world'");
        assert_eq!(row.get::<Vec<u8>>(5).unwrap(), vec![0, 255, 10]);
        assert!(row.get::<bool>(6).unwrap());
        assert_eq!(row.get::<Option<i32>>("nothing").unwrap(), None);
        assert_eq!(row.columns()[7].name(), "nothing");

        // Reading a column as the wrong type, or NULL as a plain value, or a column that is
        // not there, is an error, not a panic.
        assert!(matches!(row.get::<String>(1), Err(Error::Column { .. })));
        assert!(matches!(
            row.get::<i32>("nothing"),
            Err(Error::Column { .. })
        ));
        assert!(matches!(row.get::<i32>(8), Err(Error::NoColumn(_))));
        assert!(matches!(row.get::<i32>("absent"), Err(Error::NoColumn(_))));

        // Many rows, in order.
        let rows = c
            .query("SELECT g FROM generate_series(1, 5000) AS g", &[])
            .unwrap();
        let got: Vec<i32> = rows.iter().map(|r| r.get(0).unwrap()).collect();
        assert_eq!(got, (1..=5000).collect::<Vec<_>>());

        // A value larger than one read of the socket.
        let big = "x".repeat(3 << 20);
        let row = c.query_one("SELECT $1::text", &[&big]).unwrap();
        assert_eq!(row.get::<&str>(0).unwrap().len(), big.len());
    });
    t.wait().unwrap();
}

#[test]
fn errors_leave_the_connection_usable() {
    let pg = Pg::start();
    let t = greenhub::spawn(move || {
        let mut c = connect(&pg);
        c.batch_execute("CREATE TABLE t (id int4 PRIMARY KEY, name text NOT NULL)")
            .unwrap();
        assert_eq!(
            c.execute(
                "INSERT INTO t VALUES ($1, $2), ($3, $4)",
                &[&1_i32, &"a", &2_i32, &"b"]
            )
            .unwrap(),
            2
        );

        let e = c.query("SELEC 1", &[]).unwrap_err();
        assert_eq!(e.code(), Some("42601"), "{e}");
        let e = c
            .execute("INSERT INTO t VALUES ($1, $2)", &[&1_i32, &"again"])
            .unwrap_err();
        assert_eq!(e.code(), Some("23505"), "{e}");
        assert!(e.as_db().unwrap().detail().is_some());
        let e = c.query("SELECT * FROM missing", &[]).unwrap_err();
        assert_eq!(e.code(), Some("42P01"));

        // The caller's mistakes are caught before anything is sent.
        let e = c.query("SELECT $1::int4", &[]).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ParameterCount {
                    expected: 1,
                    given: 0
                }
            ),
            "{e}"
        );
        let e = c.query("SELECT $1::int4", &[&"text"]).unwrap_err();
        assert!(matches!(e, Error::Parameter { index: 0, .. }), "{e}");
        let e = c.query("SELECT 1\0", &[]).unwrap_err();
        assert!(matches!(e, Error::Query(_)), "{e}");
        assert!(matches!(
            c.query_one("SELECT 1 WHERE false", &[]),
            Err(Error::RowCount(0))
        ));
        assert!(matches!(
            c.query_one("SELECT * FROM t", &[]),
            Err(Error::RowCount(2))
        ));
        assert!(matches!(
            c.query_opt("SELECT * FROM t", &[]),
            Err(Error::RowCount(2))
        ));
        assert!(c.query_opt("SELECT 1 WHERE false", &[]).unwrap().is_none());

        // A batch stops at its first error.
        let e = c
            .batch_execute(
                "INSERT INTO t VALUES (3, 'c'); SELECT 1/0; INSERT INTO t VALUES (4, 'd')",
            )
            .unwrap_err();
        assert_eq!(e.code(), Some("22012"));

        assert!(!c.is_closed());
        let n: i64 = c
            .query_one("SELECT count(*) FROM t", &[])
            .unwrap()
            .get(0)
            .unwrap();
        // The batch ran as one implicit transaction: its first insert is gone too.
        assert_eq!(n, 2);
    });
    t.wait().unwrap();
}

#[test]
fn transactions_commit_roll_back_and_report_an_aborted_one() {
    let pg = Pg::start();
    let t = greenhub::spawn(move || {
        let mut c = connect(&pg);
        c.batch_execute("CREATE TABLE t (id int4 PRIMARY KEY)")
            .unwrap();
        c.transaction(|tx| tx.execute("INSERT INTO t VALUES (1)", &[]))
            .unwrap();
        let e = c
            .transaction(|tx| {
                tx.execute("INSERT INTO t VALUES (2)", &[])?;
                tx.execute("INSERT INTO t VALUES (1)", &[])
            })
            .unwrap_err();
        assert_eq!(e.code(), Some("23505"));
        assert!(!c.in_transaction());
        // The caller swallows the error and returns Ok: the transaction is rolled back, and
        // said so.
        let e = c
            .transaction(|tx| {
                tx.execute("INSERT INTO t VALUES (3)", &[])?;
                let _ = tx.execute("INSERT INTO t VALUES (1)", &[]);
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(e, Error::Aborted), "{e}");
        assert!(!c.in_transaction());
        let ids: Vec<i32> = c
            .query("SELECT id FROM t ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0).unwrap())
            .collect();
        assert_eq!(ids, vec![1]);
    });
    t.wait().unwrap();
}

#[test]
fn statements_are_kept_forgotten_past_the_cap_and_prepared_again_when_the_schema_changes() {
    let pg = Pg::start();
    let t = greenhub::spawn(move || {
        let mut c = connect(&pg);
        let count = |c: &mut Client| -> i64 {
            c.query_one("SELECT count(*) FROM pg_prepared_statements", &[])
                .unwrap()
                .get(0)
                .unwrap()
        };
        c.query_one("SELECT 1", &[]).unwrap();
        c.query_one("SELECT 1", &[]).unwrap();
        // "SELECT 1" and the count itself.
        assert_eq!(count(&mut c), 2);
        for i in 0..greenhub_pg::MAX_STATEMENTS + 10 {
            let v: i32 = c
                .query_one(&format!("SELECT {i}::int4 + $1"), &[&1_i32])
                .unwrap()
                .get(0)
                .unwrap();
            assert_eq!(v, i as i32 + 1);
        }
        assert!(count(&mut c) <= greenhub_pg::MAX_STATEMENTS as i64 + 1);

        c.batch_execute("CREATE TABLE t (a int4); INSERT INTO t VALUES (1)")
            .unwrap();
        assert_eq!(c.query("SELECT * FROM t", &[]).unwrap()[0].len(), 1);
        c.batch_execute("ALTER TABLE t ADD COLUMN b text DEFAULT 'new'")
            .unwrap();
        let rows = c.query("SELECT * FROM t", &[]).unwrap();
        assert_eq!(rows[0].get::<&str>("b").unwrap(), "new");
    });
    t.wait().unwrap();
}

#[test]
fn logins_that_cannot_succeed_say_why() {
    let pg = Pg::start();
    let t = greenhub::spawn(move || {
        let e = Client::connect(&pg.with_password("wrong")).unwrap_err();
        assert_eq!(e.code(), Some("28P01"), "{e}");
        let without: String = pg
            .conninfo
            .split_whitespace()
            .filter(|kv| !kv.starts_with("password="))
            .collect::<Vec<_>>()
            .join(" ");
        let e = Client::connect(&without).unwrap_err();
        assert!(
            matches!(e, Error::Config(ref m) if m.contains("password")),
            "{e}"
        );
        let e = Client::connect(&format!("{} sslmode=require", pg.conninfo)).unwrap_err();
        assert!(
            matches!(e, Error::Config(ref m) if m.contains("TLS")),
            "{e}"
        );
        let e = Client::connect("host=127.0.0.1 port=notaport").unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{e}");
        let e = Client::connect(&format!("{} dbname=nosuchdb", pg.conninfo)).unwrap_err();
        assert_eq!(e.code(), Some("3D000"), "{e}");
        // A port nobody listens on.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let e = Client::connect(&format!("host=127.0.0.1 port={port} user=x")).unwrap_err();
        assert!(matches!(e, Error::Connect { .. }), "{e}");
        // A URL works as well as key=value pairs.
        let port_of = |kv: &str| {
            pg.conninfo
                .split_whitespace()
                .find_map(|p| p.strip_prefix(kv))
                .map(str::to_string)
        };
        if let (Some(port), Some(password)) = (port_of("port="), port_of("password=")) {
            let url = format!("postgresql://postgres:{password}@127.0.0.1:{port}/postgres");
            let mut c = Client::connect(&url).unwrap();
            assert_eq!(
                c.query_one("SELECT 1::int4", &[])
                    .unwrap()
                    .get::<i32>(0)
                    .unwrap(),
                1
            );
        }
    });
    t.wait().unwrap();
}

#[test]
fn a_deadline_or_a_kill_cancels_the_statement_and_closes_the_connection() {
    let pg = Pg::start();
    let t = greenhub::spawn(move || {
        let mut observer = connect(&pg);
        let mut c = connect(&pg);
        let e = greenhub::with_timeout(Duration::from_millis(200), || {
            c.query("SELECT pg_sleep(600) -- deadline marker", &[])
        })
        .unwrap_err();
        assert!(matches!(e, Error::TimedOut), "{e}");
        assert!(e.is_timeout());
        assert!(c.is_closed());
        assert!(matches!(c.query("SELECT 1", &[]), Err(Error::Closed)));
        assert!(
            stops_running(&mut observer, "deadline marker"),
            "not cancelled"
        );

        // A kill: the pooled connection is discarded and its statement cancelled.
        let pool = Pool::builder(&pg.conninfo)
            .unwrap()
            .max_size(1)
            .build()
            .unwrap();
        let p = pool.clone();
        let sleeper = greenhub::spawn(move || p.query("SELECT pg_sleep(600) -- kill marker", &[]));
        while running(&mut observer, "kill marker") == 0 {
            assert!(!sleeper.is_done(), "{:?}", sleeper.wait());
            greenhub::sleep(Duration::from_millis(10)).unwrap();
        }
        sleeper.kill();
        assert!(sleeper.wait().is_err(), "the killed thread has no value");
        assert!(stops_running(&mut observer, "kill marker"), "not cancelled");
        // The pool made a fresh connection for the next caller.
        assert_eq!(
            pool.query_one("SELECT 7::int4", &[])
                .unwrap()
                .get::<i32>(0)
                .unwrap(),
            7
        );
        assert_eq!(pool.size(), 1);
    });
    t.wait().unwrap();
}

#[test]
fn a_pool_serves_many_green_threads_and_loses_nothing() {
    let pg = Pg::start();
    let main = greenhub::spawn(move || {
        let pool = Pool::builder(&pg.conninfo)
            .unwrap()
            .max_size(8)
            .name("test pool")
            .build()
            .unwrap();
        pool.batch_execute("CREATE TABLE seen (v int8 PRIMARY KEY)")
            .unwrap();
        const THREADS: i64 = 200;
        const EACH: i64 = 25;
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let pool = pool.clone();
                greenhub::spawn(move || {
                    let mut echoed = Vec::new();
                    for i in 0..EACH {
                        let v = t * EACH + i;
                        let row = pool.query_one("SELECT $1::int8", &[&v]).unwrap();
                        echoed.push(row.get::<i64>(0).unwrap());
                        pool.execute("INSERT INTO seen VALUES ($1)", &[&v]).unwrap();
                    }
                    echoed
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in threads {
            for v in t.wait().unwrap() {
                assert!(all.insert(v), "{v} came back twice");
            }
        }
        assert_eq!(all.len() as i64, THREADS * EACH);
        let n: i64 = pool
            .query_one("SELECT count(DISTINCT v) FROM seen", &[])
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, THREADS * EACH);
        assert!(pool.size() <= 8, "{} connections", pool.size());
        // A connection given back inside a transaction is not handed to the next caller.
        {
            let mut c = pool.get().unwrap();
            c.batch_execute("BEGIN; INSERT INTO seen VALUES (-1)")
                .unwrap();
        }
        for _ in 0..8 {
            assert!(!pool.get().unwrap().in_transaction());
        }
        let n: i64 = pool
            .query_one("SELECT count(*) FROM seen WHERE v = -1", &[])
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(n, 0, "the abandoned transaction was rolled back");
    });
    main.wait().unwrap();
}
