//! eventlet's web crawler: a [`GreenPool`](greenhub::GreenPool) of at most `--pool` green
//! threads fetches pages, following their links, each page once. The web is a local test site
//! (`--pages` numbered pages, each answer 20 ms late), so it runs anywhere and stays on
//! loopback; the crawl takes about pages x 20 ms / pool instead of pages x 20 ms.
//!
//! Run it with `cargo run --release --bin crawler` (`-- --pages 500 --pool 50`).

use std::time::{Duration, Instant};

use greenhub_examples::crawler::{Site, crawl};

fn main() {
    let mut pages = 300usize;
    let mut pool = 20usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<usize>().ok());
        match (arg.as_str(), value) {
            ("--pages", Some(n)) if n > 0 => pages = n,
            ("--pool", Some(n)) if n > 0 => pool = n,
            _ => {
                eprintln!("usage: crawler [--pages N] [--pool N] (both at least 1)");
                std::process::exit(2);
            }
        }
    }
    let delay = Duration::from_millis(20);
    let site = match Site::start(pages, delay) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot start the test site: {e}");
            std::process::exit(1);
        }
    };
    let addr = site.addr();
    println!(
        "crawling a test site of {pages} pages at http://{addr}/page/0 with a pool of {pool} \
         (pid {}; watch it: cargo run --release --bin inspector -- attach {})",
        std::process::id(),
        std::process::id()
    );
    let t0 = Instant::now();
    let crawled = greenhub::thread::Builder::new()
        .name("crawl")
        .spawn(move || crawl(addr, "/page/0", pool, usize::MAX))
        .map_err(|e| e.to_string())
        .and_then(|t| t.wait().map_err(|e| e.to_string()));
    let result = match crawled {
        Ok(result) => result,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let took = t0.elapsed();
    println!(
        "fetched {} pages ({} failed) in {:.2}s: the site answered at most {} requests at once; \
         one at a time would take {:.2}s",
        result.fetched.len(),
        result.failed.len(),
        took.as_secs_f64(),
        site.most_in_flight(),
        (delay * site.served() as u32).as_secs_f64()
    );
    for (url, why) in &result.failed {
        println!("  failed: {url}: {why}");
    }
    site.stop();
    if !result.failed.is_empty() {
        std::process::exit(1);
    }
}
