//! The crawler, the pipeline and the misbehaving program: nothing lost, nothing twice, the
//! bounds respected, and the misbehaviour caught.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use greenhub_examples::crawler::{Site, crawl};
use greenhub_examples::pipeline;

#[test]
fn the_crawler_fetches_every_page_once_within_its_pool() {
    for (pages, pool) in [(120usize, 8usize), (200, 25), (50, 1)] {
        let site = Site::start(pages, Duration::from_millis(5)).unwrap();
        let addr = site.addr();
        let result = greenhub::spawn(move || crawl(addr, "/page/0", pool, usize::MAX))
            .wait()
            .unwrap();
        assert!(result.failed.is_empty(), "{:?}", result.failed);
        let distinct: HashSet<&String> = result.fetched.iter().collect();
        assert_eq!(distinct.len(), result.fetched.len(), "a page fetched twice");
        assert_eq!(
            result.fetched.len(),
            pages,
            "every page is reachable from page 0"
        );
        assert_eq!(site.served(), pages, "the site served each page once");
        let most = site.most_in_flight();
        assert!(most <= pool, "{most} fetches at once with a pool of {pool}");
        if pool > 1 {
            assert!(most > 1, "the pool fetched concurrently");
        }
        site.stop();
    }
}

#[test]
fn the_crawler_stops_at_its_limit() {
    let site = Site::start(500, Duration::ZERO).unwrap();
    let addr = site.addr();
    let result = greenhub::spawn(move || crawl(addr, "/page/0", 10, 40))
        .wait()
        .unwrap();
    assert_eq!(result.fetched.len(), 40);
    site.stop();
}

#[test]
fn the_pipeline_delivers_every_item_once_and_holds_its_bound() {
    for (items, workers, capacity) in [(5_000u64, 50usize, 16usize), (3_000, 1, 4), (2_000, 200, 8)]
    {
        let outcome = greenhub::spawn(move || {
            pipeline::run(items, workers, capacity, Duration::ZERO).expect("below the limit")
        })
        .wait()
        .unwrap();
        let mut got = outcome.received.clone();
        got.sort_unstable();
        let want: Vec<u64> = (0..items).map(|i| i * i).collect();
        assert_eq!(got, want, "{workers} workers: lost or duplicated items");
        assert!(outcome.most_queued <= capacity);
        if workers == 1 {
            // One worker: the order is kept end to end.
            assert_eq!(outcome.received, want);
        }
    }
}

#[test]
fn the_misbehaving_program_is_caught_three_times() {
    let out = Command::new(env!("CARGO_BIN_EXE_misbehave"))
        .output()
        .expect("run misbehave");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("\"blocker\" kept worker") && stdout.contains("busy for"),
        "{stdout}"
    );
    assert!(
        stdout.contains("caught: 1 connection(s) of pool \"misbehave-db\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("cut short by its 50 ms deadline"),
        "{stdout}"
    );
    assert!(!stdout.contains("missed:"), "{stdout}");
}
