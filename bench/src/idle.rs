//! How many idle connections the chat server holds, and its resident memory per connection.
//!
//! The server runs in a child process (`--child idle_server`) with its descriptor limit raised
//! to the hard limit; the clients run in further child processes (`--child idle_clients`), a
//! few thousand connections each, since one process may open only so many descriptors. The
//! parent adds clients until the server refuses more or the target is reached, then reads the
//! server's resident memory. The chat server keeps two descriptors per participant (a reader's
//! and a writer's handle), so the per-process cap on descriptors bounds it at half of it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use crate::runtimes::start_greenhub;

/// Raises this process's descriptor limit to its hard limit.
fn raise_fd_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// The server child: a chat server on loopback; answers `rss` and `count` on stdin.
pub fn server() {
    raise_fd_limit();
    start_greenhub(2, None);
    let listener = greenhub::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (server, room) = greenhub_examples::chat::start(listener, 1_000_000).unwrap();
    // Opened now: once the server has used every descriptor, opening it would fail.
    let mut statm = std::fs::File::open("/proc/self/statm").expect("open /proc/self/statm");
    println!("{}", server.local_addr());
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "rss" => println!("{}", resident(&mut statm)),
            "count" => println!("{}", room.len()),
            _ => break,
        }
    }
    std::process::exit(0);
}

/// Resident bytes, from an already open `/proc/self/statm`.
fn resident(statm: &mut std::fs::File) -> u64 {
    use std::io::{Read, Seek};
    let mut text = String::new();
    if statm.rewind().is_err() || statm.read_to_string(&mut text).is_err() {
        return 0;
    }
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// A client child: opens `n` idle connections to `addr` (plain sockets), reports how many it
/// could open, then holds them until stdin closes.
pub fn clients(addr: &str, n: usize) {
    raise_fd_limit();
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        match std::net::TcpStream::connect(addr) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    println!("{}", held.len());
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    std::process::exit(0);
}

struct Proc {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Proc {
    fn start(args: &[&str]) -> Proc {
        let exe = std::env::current_exe().expect("the harness's own path");
        let mut child = Command::new(exe)
            .arg("--child")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a child");
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap());
        Proc {
            child,
            input,
            output,
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.output.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    fn ask(&mut self, what: &str) -> u64 {
        writeln!(self.input, "{what}").unwrap();
        self.line().parse().unwrap_or(0)
    }
}

/// Idle connections the chat server held, and its resident KiB per connection.
pub struct Held {
    /// Connections in the chat room at the end.
    pub connections: u64,
    /// Resident memory added per connection, in bytes.
    pub bytes_per_connection: f64,
}

/// Opens up to `target` idle connections to a chat server in `per_client` batches.
pub fn measure(target: u64, per_client: u64) -> Held {
    let mut server = Proc::start(&["idle_server"]);
    let addr = server.line();
    std::thread::sleep(Duration::from_millis(200));
    let before = server.ask("rss");
    let mut clients = Vec::new();
    let mut opened = 0;
    while opened < target {
        let n = per_client.min(target - opened);
        let mut c = Proc::start(&["idle_clients", &addr, &n.to_string()]);
        let got: u64 = c.line().parse().unwrap_or(0);
        clients.push(c);
        opened += got;
        if got < n {
            break;
        }
    }
    // Let the server accept and set up every connection it can.
    let mut held = 0;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(100));
        let now = server.ask("count");
        if now == held && now > 0 {
            break;
        }
        held = now;
    }
    let after = server.ask("rss");
    eprintln!("idle_connections: server resident {before} bytes before, {after} after");
    for mut c in clients {
        let _ = writeln!(c.input, "done");
        let _ = c.child.wait();
    }
    let _ = writeln!(server.input, "quit");
    let _ = server.child.wait();
    Held {
        connections: held,
        bytes_per_connection: after.saturating_sub(before) as f64 / held.max(1) as f64,
    }
}
