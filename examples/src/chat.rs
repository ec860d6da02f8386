//! The chat server from eventlet's introduction: every line a participant sends reaches all
//! the others, in order; people join and leave at any time.
//!
//! Each participant has two green threads: the one `serve` gives it reads its lines and hands
//! each to every other participant's outbox; a writer of its own empties its outbox to its
//! socket. Handing a line over never waits, so a sender is never held by a slow receiver, and
//! a line is one shared buffer however many receive it. The rules that keep the server up
//! under real traffic:
//! - An outbox holds at most [`OUTBOX`] lines. A participant that falls that far behind, or
//!   whose socket takes nothing for [`WRITE_TIMEOUT`], is dropped: it cannot hold anyone back
//!   or make the server buffer without end.
//! - A line is at most [`MAX_LINE`] bytes; a longer one arrives cut into lines of that size.
//! - A participant whose client has left is out of the room as soon as its reader sees the
//!   end: its outbox closes and its writer ends.
//!
//! A participant costs two green threads and two descriptors (its socket, and a second handle
//! on it for the writer).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use greenhub::net::Server;
use greenhub::net::{TcpListener, TcpStream};
use greenhub::{GreenThread, Queue};
use parking_lot::RwLock;

/// How long a write to a participant may wait before the participant is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// The lines a participant may have waiting to be written before it is dropped as too slow.
pub const OUTBOX: usize = 8192;

/// The longest line; a longer one is cut.
pub const MAX_LINE: usize = 4096;

/// A line on its way: one buffer shared by every receiver.
type Line = Arc<[u8]>;

/// The participants, by green thread id, and their outboxes.
#[derive(Clone, Default)]
pub struct Room {
    members: Arc<RwLock<HashMap<u64, Queue<Line>>>>,
}

impl Room {
    /// How many participants are in the room.
    pub fn len(&self) -> usize {
        self.members.read().len()
    }

    /// Whether nobody is in the room.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn join(&self, id: u64) -> Queue<Line> {
        let outbox = Queue::bounded(OUTBOX).named("chat outbox");
        self.members.write().insert(id, outbox.clone());
        outbox
    }

    fn contains(&self, id: u64) -> bool {
        self.members.read().contains_key(&id)
    }

    /// Takes `id` out; its writer sees its outbox closed and ends without writing what is left
    /// in it, and its reader sees the end of its socket.
    fn leave(&self, id: u64) {
        if let Some(outbox) = self.members.write().remove(&id) {
            outbox.close();
        }
    }

    /// Hands `line` to every other participant, without waiting; a participant whose outbox
    /// is full is dropped.
    fn broadcast(&self, from: u64, line: &Line) {
        let mut behind = Vec::new();
        for (id, outbox) in self.members.read().iter() {
            if *id != from && outbox.try_put(line.clone()).is_err() {
                behind.push(*id);
            }
        }
        for id in behind {
            self.leave(id);
        }
    }
}

/// Writes a participant's outbox to its socket, several lines per write when they are there,
/// until the outbox closes or the client stops taking them.
fn writer(outbox: Queue<Line>, mut out: TcpStream) {
    let mut batch = Vec::with_capacity(MAX_LINE);
    while let Ok(line) = outbox.get() {
        if outbox.is_closed() {
            // Out of the room (gone or too slow): what is left is not written.
            break;
        }
        batch.clear();
        batch.extend_from_slice(&line);
        while batch.len() < 16 * 1024 {
            match outbox.try_get() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if out.write_all(&batch).is_err() {
            break;
        }
    }
    // Gone or too slow: its reader sees the end and leaves the room.
    let _ = out.shutdown(std::net::Shutdown::Both);
}

/// Takes a participant out of the room however its reader ends (the client left, the server
/// stopped and killed it), and ends its writer.
struct Membership {
    room: Room,
    id: u64,
    writer: GreenThread<()>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.room.leave(self.id);
        self.writer.kill();
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
    let outbox = room.join(id);
    let writer = match greenhub::thread::Builder::new()
        .name("chat writer")
        .spawn(move || writer(outbox, out))
    {
        Ok(w) => w,
        Err(_) => {
            room.leave(id);
            return;
        }
    };
    let _member = Membership {
        room: room.clone(),
        id,
        writer,
    };
    // A small buffer: an idle participant costs little (longer lines still come whole).
    let mut reader = BufReader::with_capacity(512, &conn);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 - 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            // Dropped from the room (too slow a reader): it says nothing more.
            Ok(_) if !room.contains(id) => break,
            Ok(_) => {
                if line.last() != Some(&b'\n') {
                    line.push(b'\n');
                }
                room.broadcast(id, &Line::from(line.as_slice()));
            }
        }
    }
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
