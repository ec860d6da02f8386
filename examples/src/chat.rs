//! The chat server from eventlet's introduction: every line a participant sends reaches all
//! the others, in order; people join and leave at any time.
//!
//! Each connection has two green threads: a reader that takes the participant's lines and
//! puts them on every other participant's queue, and a writer that sends its own queue's
//! lines to its participant. A participant whose queue fills up (a client that does not read)
//! is dropped rather than let it hold the others back or grow memory without bound.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use greenhub::net::{TcpListener, TcpStream};
use greenhub::{Queue, Server};
use parking_lot::Mutex;

/// How many lines may wait for a slow participant before it is dropped.
pub const BACKLOG: usize = 4096;

/// The participants and their outgoing queues.
#[derive(Clone, Default)]
pub struct Room {
    members: Arc<Mutex<HashMap<u64, Queue<Arc<str>>>>>,
}

impl Room {
    /// How many participants are in the room.
    pub fn len(&self) -> usize {
        self.members.lock().len()
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn join(&self, id: u64) -> Queue<Arc<str>> {
        let q = Queue::builder().bounded(BACKLOG).build();
        self.members.lock().insert(id, q.clone());
        q
    }

    fn leave(&self, id: u64) {
        if let Some(q) = self.members.lock().remove(&id) {
            q.close();
        }
    }

    /// Puts `line` on every other participant's queue; those whose queue is full are dropped.
    fn broadcast(&self, from: u64, line: Arc<str>) {
        let mut slow = Vec::new();
        for (id, q) in self.members.lock().iter() {
            if *id != from && q.try_put(line.clone()).is_err() {
                slow.push(*id);
            }
        }
        for id in slow {
            self.leave(id);
        }
    }
}

/// Serves one participant until it leaves.
fn participant(room: Room, conn: TcpStream, peer: SocketAddr) {
    let Some(id) = greenhub::current().map(|c| c.id()) else {
        return;
    };
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    let outbox = room.join(id);
    let writer = greenhub::Builder::new()
        .name(format!("chat writer {peer}"))
        .spawn(move || {
            while let Ok(line) = outbox.get() {
                if out.write_all(line.as_bytes()).is_err() {
                    break;
                }
            }
            let _ = out.shutdown(std::net::Shutdown::Both);
        });
    let mut reader = BufReader::new(&conn);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if !line.ends_with('\n') {
                    line.push('\n');
                }
                room.broadcast(id, Arc::from(line.as_str()));
            }
        }
    }
    room.leave(id);
    if let Ok(w) = writer {
        let _ = w.wait();
    }
}

/// Starts a chat server on `listener`; the room shows who is in.
pub fn start(listener: TcpListener, max_participants: usize) -> std::io::Result<(Server, Room)> {
    let room = Room::default();
    let r = room.clone();
    let server = greenhub::serve(listener, max_participants, move |conn, peer| {
        participant(r.clone(), conn, peer)
    })?;
    Ok((server, room))
}
