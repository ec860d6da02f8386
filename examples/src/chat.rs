//! The chat server from eventlet's introduction: every line a participant sends reaches all
//! the others, in order; people join and leave at any time.
//!
//! As in eventlet's version, a participant's green thread reads its lines and writes each one
//! to every other participant; a green mutex per participant keeps lines whole when several
//! senders write to the same participant, and keeps each sender's lines in order. So a
//! participant costs one green thread and its socket (two descriptors: the reading handle and
//! the writing one). A participant that does not read for [`WRITE_TIMEOUT`] is dropped rather
//! than let it hold every sender back.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use greenhub::net::Server;
use greenhub::net::{TcpListener, TcpStream};
use parking_lot::Mutex;

/// How long a write to a participant may wait before the participant is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The participants and their writing handles.
#[derive(Clone, Default)]
pub struct Room {
    members: Arc<Mutex<HashMap<u64, Arc<greenhub::Mutex<TcpStream>>>>>,
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

    fn leave(&self, id: u64) {
        // Out of the table first: the green lock below may wait, never under the table's lock.
        let removed = self.members.lock().remove(&id);
        if let Some(out) = removed
            && let Ok(out) = out.lock()
        {
            // Its reader sees the end too, and leaves.
            let _ = out.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Writes `line` to every other participant; those that cannot take it are dropped.
    fn broadcast(&self, from: u64, line: &[u8]) {
        let others: Vec<(u64, Arc<greenhub::Mutex<TcpStream>>)> = self
            .members
            .lock()
            .iter()
            .filter(|(id, _)| **id != from)
            .map(|(id, out)| (*id, out.clone()))
            .collect();
        for (id, out) in others {
            let sent = match out.lock() {
                Ok(mut out) => out.write_all(line).is_ok(),
                Err(_) => false,
            };
            if !sent {
                self.leave(id);
            }
        }
    }
}

/// Serves one participant until it leaves.
fn participant(room: Room, conn: TcpStream, _peer: SocketAddr) {
    let Some(id) = greenhub::current().map(|c| c.id()) else {
        return;
    };
    let Ok(out) = conn.try_clone() else {
        return;
    };
    if out.set_write_timeout(Some(WRITE_TIMEOUT)).is_err() {
        return;
    }
    room.members
        .lock()
        .insert(id, Arc::new(greenhub::Mutex::new(out)));
    // A small buffer: an idle participant costs little (longer lines still come whole).
    let mut reader = BufReader::with_capacity(512, &conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                room.broadcast(id, &line);
            }
        }
    }
    room.leave(id);
}

/// Starts a chat server on `listener`; the room shows who is in.
pub fn start(listener: TcpListener, max_participants: usize) -> std::io::Result<(Server, Room)> {
    let room = Room::default();
    let r = room.clone();
    let server = greenhub::net::serve(listener, max_participants, move |conn, peer| {
        participant(r.clone(), conn, peer)
    })?;
    Ok((server, room))
}
