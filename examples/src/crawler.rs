//! eventlet's web crawler: fetch pages with a bounded [`GreenPool`], following links, each
//! page once. The web is a local test server (a site of numbered pages that link to each
//! other, each answer a little slow), so the crawl is reproducible and stays on loopback.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use greenhub::net::{TcpListener, TcpStream};
use greenhub::{GreenPool, Queue, net::Server};

/// The test site: page `i` of `pages` links to pages `2i+1`, `2i+2` and `(7i+3) % pages`
/// (links past the end are dropped), so every page is reachable from page 0 and many are
/// linked from several places.
#[derive(Debug)]
pub struct Site {
    server: Server,
    most_in_flight: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl Site {
    /// Serves `pages` pages on a free loopback port, each answer after `delay`.
    pub fn start(pages: usize, delay: Duration) -> std::io::Result<Site> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let most_in_flight = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (now, most, count) = (in_flight.clone(), most_in_flight.clone(), served.clone());
        let server = greenhub::net::serve(listener, 1000, move |mut conn, _| {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            let _ = greenhub::sleep(delay);
            let path = String::from_utf8_lossy(&request)
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .to_owned();
            let answer = match path
                .strip_prefix("/page/")
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) if i < pages => {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body: String = [2 * i + 1, 2 * i + 2, (7 * i + 3) % pages]
                        .iter()
                        .filter(|&&j| j < pages)
                        .map(|j| format!("<a href=\"/page/{j}\">page {j}</a>\n"))
                        .collect();
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                }
                _ => "HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_owned(),
            };
            now.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.write_all(answer.as_bytes());
        })?;
        Ok(Site {
            server,
            most_in_flight,
            served,
        })
    }

    /// The site's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// The most requests the site was answering at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// Pages served (404s not counted).
    pub fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    /// Stops serving.
    pub fn stop(self) {
        self.server.stop(Duration::from_secs(1));
    }
}

/// Fetches `path` from `addr` with HTTP/1.0: the body, or why not.
pub fn fetch(addr: SocketAddr, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or("").to_owned());
    }
    Ok(body.to_owned())
}

/// The links of a page.
pub fn links(body: &str) -> Vec<String> {
    body.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(String::from)
        .collect()
}

/// What a crawl did.
#[derive(Debug, Default)]
pub struct Crawl {
    /// Pages fetched, in the order their fetches finished.
    pub fetched: Vec<String>,
    /// Fetches that failed, with why.
    pub failed: Vec<(String, String)>,
}

/// Crawls from `start`, at most `concurrency` fetches at once (a [`GreenPool`]), each URL
/// once, until no new link is found or `limit` pages are fetched.
pub fn crawl(addr: SocketAddr, start: &str, concurrency: usize, limit: usize) -> Crawl {
    let pool = GreenPool::new(concurrency).named("crawler");
    // Finished fetches come back here: the URL and its links, or the error.
    let done: Queue<(String, Result<Vec<String>, String>)> = Queue::unbounded();
    let mut seen: HashSet<String> = HashSet::from([start.to_owned()]);
    let mut pending = 0usize;
    let mut result = Crawl::default();
    let spawn = |url: String, pending: &mut usize| {
        let done = done.clone();
        let spawned = pool.spawn(move || {
            let outcome = fetch(addr, &url).map(|body| links(&body));
            let _ = done.put((url, outcome));
        });
        if spawned.is_ok() {
            *pending += 1;
        }
    };
    spawn(start.to_owned(), &mut pending);
    while pending > 0 {
        let Ok((url, outcome)) = done.get() else {
            break;
        };
        pending -= 1;
        match outcome {
            Ok(found) => {
                result.fetched.push(url);
                for link in found {
                    if seen.len() < limit && seen.insert(link.clone()) {
                        // Waits for a free slot when `concurrency` fetches are under way.
                        spawn(link, &mut pending);
                    }
                }
            }
            Err(e) => result.failed.push((url, e)),
        }
    }
    result
}
