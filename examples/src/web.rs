//! The flagship: a database-backed web service on greenhub-http, in the shapes of eventlet's
//! "db service" and the TechEmpower benchmarks. Every request runs in its connection's green
//! thread. PostgreSQL is spoken on green sockets (greenhub-pg): a query parks the green thread
//! and nothing else. SQLite is a blocking library: its calls run on dbpool's threads while the
//! green thread waits.
//!
//! - `GET /plaintext`: `Hello, World!`
//! - `GET /json`: `{"message":"Hello, World!"}`
//! - `GET /db`: one random row of the `world` table, `{"id":..,"randomNumber":..}`
//! - `GET /queries?n=20`: that many random rows, one query each (1 to 500; `queries=` too)
//! - `GET /updates?n=20`: that many random rows, each given a new random number, saved
//! - `GET /ws`: a WebSocket that echoes every message
//!
//! The database is SQLite in a file of its own by default, PostgreSQL at `DATABASE_URL` when
//! it is set; either way the `world` table holds 10,000 rows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use greenhub_dbpool::{Pool, SqliteConnectionManager, SqlitePool};
use greenhub_http::ws::{self, Message};
use greenhub_http::{Request, Response, response};
use http::StatusCode;

/// Rows in the `world` table.
pub const ROWS: i32 = 10_000;

/// One row of `world`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct World {
    /// Its key, 1 to [`ROWS`].
    pub id: i32,
    /// A number from 1 to 10,000.
    #[serde(rename = "randomNumber")]
    pub random_number: i32,
}

/// The service's database.
#[derive(Clone)]
pub enum Db {
    /// An embedded SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL server.
    Postgres(greenhub_pg::Pool),
}

/// What a database call of the service can fail with.
pub type DbError = Box<dyn std::error::Error + Send + Sync>;

type DbResult<T> = Result<T, DbError>;

impl Db {
    /// SQLite in `dir`, or PostgreSQL at `database_url`; the `world` table made and filled if
    /// it is not there yet. Says which in the second value.
    pub fn open(
        dir: &std::path::Path,
        database_url: Option<&str>,
        connections: u32,
    ) -> Result<(Db, String), Box<dyn std::error::Error>> {
        if let Some(url) = database_url {
            let pool = greenhub_pg::Pool::builder(url)?
                .name("web-pg")
                .max_size(connections as usize)
                .build()?;
            pool.batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS world (id integer PRIMARY KEY, randomnumber integer NOT NULL);
                 INSERT INTO world (id, randomnumber)
                   SELECT i, 1 + (i * 7919) % 10000 FROM generate_series(1, {ROWS}) i
                   ON CONFLICT (id) DO NOTHING"
            ))?;
            return Ok((Db::Postgres(pool), "PostgreSQL at DATABASE_URL".into()));
        }
        let path = dir.join("web.sqlite");
        let manager = SqliteConnectionManager::file(&path)
            .with_init(|c| c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA busy_timeout=5000;"));
        let pool = Pool::builder()
            .name("web-sqlite")
            .max_size(connections)
            .build(manager)?;
        pool.run(|c| {
            c.execute_batch(&format!(
                "CREATE TABLE IF NOT EXISTS world (id INTEGER PRIMARY KEY, randomnumber INTEGER NOT NULL);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ROWS})
                 INSERT OR IGNORE INTO world (id, randomnumber) SELECT i, 1 + (i * 7919) % 10000 FROM n;"
            ))
        })??;
        Ok((Db::Sqlite(pool), format!("SQLite at {}", path.display())))
    }

    /// The rows with these ids, one query each.
    pub fn rows(&self, ids: Vec<i32>) -> DbResult<Vec<World>> {
        match self {
            Db::Sqlite(pool) => pool
                .run(move |c| {
                    let mut st =
                        c.prepare_cached("SELECT id, randomnumber FROM world WHERE id = ?1")?;
                    ids.iter()
                        .map(|id| {
                            st.query_row([id], |r| {
                                Ok(World {
                                    id: r.get(0)?,
                                    random_number: r.get(1)?,
                                })
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })?
                .map_err(Into::into),
            Db::Postgres(pool) => {
                let mut c = pool.get()?;
                ids.into_iter()
                    .map(|id| {
                        let row = c.query_one(
                            "SELECT id, randomnumber FROM world WHERE id = $1",
                            &[&id],
                        )?;
                        Ok(World {
                            id: row.get(0)?,
                            random_number: row.get(1)?,
                        })
                    })
                    .collect()
            }
        }
    }

    /// Saves new random numbers for these rows, in one transaction.
    pub fn save(&self, rows: &[World]) -> DbResult<()> {
        let mut rows = rows.to_vec();
        // In key order, so that concurrent updates lock rows in the same order.
        rows.sort_by_key(|w| w.id);
        match self {
            Db::Sqlite(pool) => pool
                .run(move |c| {
                    let tx = c.transaction()?;
                    {
                        let mut st =
                            tx.prepare_cached("UPDATE world SET randomnumber = ?1 WHERE id = ?2")?;
                        for w in &rows {
                            st.execute([w.random_number, w.id])?;
                        }
                    }
                    tx.commit()
                })?
                .map_err(Into::into),
            Db::Postgres(pool) => {
                let ids: Vec<i32> = rows.iter().map(|w| w.id).collect();
                let numbers: Vec<i32> = rows.iter().map(|w| w.random_number).collect();
                pool.execute(
                    "UPDATE world SET randomnumber = v.r
                     FROM (SELECT unnest($1::int[]) AS id, unnest($2::int[]) AS r) AS v
                     WHERE world.id = v.id",
                    &[&ids, &numbers],
                )
                .map(drop)
                .map_err(Into::into)
            }
        }
    }
}

/// Random numbers from 1 to 10,000 (xorshift; the seed differs per call site and request).
fn random(seed: &mut u64) -> i32 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    (*seed % ROWS as u64) as i32 + 1
}

fn seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    NEXT.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) | 1
}

/// How many rows a `/queries` or `/updates` asks for: `n=` or `queries=`, 1 to 500
/// (anything else counts as 1, as TechEmpower asks).
pub fn count(query: Option<&str>) -> usize {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "n" || *k == "queries")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(1)
        .clamp(1, 500)
}

fn db_error(e: DbError) -> Response {
    log::warn!("web: database call failed: {e}");
    response::text_status(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("the database did not answer: {e}\n"),
    )
}

/// The service's handler.
pub fn handler(db: Db) -> impl Fn(Request<'_>) -> Response + Send + Sync + 'static {
    move |req: Request<'_>| {
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return response::status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let mut seed = seed();
        match req.uri().path() {
            "/plaintext" => response::text("Hello, World!"),
            "/json" => response::json(&serde_json::json!({ "message": "Hello, World!" })),
            "/db" => match db.rows(vec![random(&mut seed)]) {
                Ok(rows) => response::json(&rows[0]),
                Err(e) => db_error(e),
            },
            "/queries" => {
                let ids = (0..count(req.uri().query()))
                    .map(|_| random(&mut seed))
                    .collect();
                match db.rows(ids) {
                    Ok(rows) => response::json(&rows),
                    Err(e) => db_error(e),
                }
            }
            "/updates" => {
                let ids = (0..count(req.uri().query()))
                    .map(|_| random(&mut seed))
                    .collect();
                let rows = db.rows(ids).and_then(|mut rows| {
                    for w in &mut rows {
                        w.random_number = random(&mut seed);
                    }
                    db.save(&rows).map(|()| rows)
                });
                match rows {
                    Ok(rows) => response::json(&rows),
                    Err(e) => db_error(e),
                }
            }
            "/ws" => ws::upgrade(&req, ws::Config::default(), echo),
            _ => response::status(StatusCode::NOT_FOUND),
        }
    }
}

/// Echoes every text and binary message until the client closes.
fn echo(mut socket: ws::WebSocket) {
    while let Ok(msg) = socket.read() {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && socket.send(msg).is_err() {
            return;
        }
    }
}

/// Asks every endpoint once, as a client would, and checks the answers: what `--check`
/// runs, and what CI sees.
pub fn check(base: &str) -> Result<(), String> {
    let client = greenhub_http::client::Client::builder()
        .timeout(Some(Duration::from_secs(30)))
        .build();
    let get = |path: &str| {
        client
            .get(&format!("{base}{path}"))
            .send()
            .map_err(|e| format!("GET {path}: {e}"))
    };
    let plain = get("/plaintext")?;
    if plain.text() != "Hello, World!" {
        return Err(format!("/plaintext said {:?}", plain.text()));
    }
    let json: serde_json::Value = get("/json")?.json().map_err(|e| e.to_string())?;
    if json["message"] != "Hello, World!" {
        return Err(format!("/json said {json}"));
    }
    let one: World = get("/db")?.json().map_err(|e| format!("/db: {e}"))?;
    if !(1..=ROWS).contains(&one.id) {
        return Err(format!("/db gave {one:?}"));
    }
    let many: Vec<World> = get("/queries?n=20")?
        .json()
        .map_err(|e| format!("/queries: {e}"))?;
    if many.len() != 20 {
        return Err(format!("/queries?n=20 gave {} rows", many.len()));
    }
    let updated: Vec<World> = get("/updates?n=5")?
        .json()
        .map_err(|e| format!("/updates: {e}"))?;
    if updated.len() != 5 {
        return Err(format!("/updates?n=5 gave {} rows", updated.len()));
    }
    let ws_url = format!("{}/ws", base.replacen("http://", "ws://", 1));
    let (mut socket, _) =
        ws::connect(&ws_url, ws::Config::default()).map_err(|e| format!("/ws: {e}"))?;
    socket
        .send(Message::text("ping"))
        .map_err(|e| e.to_string())?;
    let back = socket.read().map_err(|e| e.to_string())?;
    if back != Message::text("ping") {
        return Err(format!("/ws echoed {back:?}"));
    }
    let _ = socket.close(None);
    Ok(())
}
