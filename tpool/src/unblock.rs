//! [`Unblock`]: a blocking reader, writer or iterator made usable from green threads.

use std::any::Any;
use std::io::{self, Read, Write};
use std::panic::Location;

use crate::{Call, Error, Pool, default_pool};

/// What a pool call on the wrapped object hands back: the object, and the operation's result.
struct Returned<T> {
    inner: T,
    out: Box<dyn Any + Send>,
}

/// Wraps a blocking [`Read`], [`Write`] or [`Iterator`] (a file, stdin, a pipe, lines of a
/// big file) so that each operation runs on a pool thread while the green thread waits
/// cooperatively, like the `blocking` crate's `Unblock` for async code.
///
/// - Reads fetch up to 64 KiB per pool call and serve smaller reads from that buffer.
/// - Writes are buffered; a full buffer (64 KiB) is written by a pool call in the background
///   while the green thread goes on, and [`Write::flush`] waits for everything. An error of a
///   background write is returned by the next `write` or `flush`.
/// - Iterators pull one item per pool call (an item may take long to come: stdin's next line).
/// - An operation cut short by a deadline returns `ErrorKind::TimedOut` and loses nothing:
///   the pool call goes on, and the next operation picks up its result first.
/// - Dropping a writer with bytes not yet flushed hands them to the pool without waiting.
///
/// ```
/// use std::io::{BufRead, BufReader};
/// use greenhub_tpool::Unblock;
///
/// let lines = greenhub::spawn(|| {
///     let file = std::fs::File::open("/proc/self/status").unwrap();
///     BufReader::new(Unblock::new(file)).lines().count()
/// });
/// assert!(lines.wait().unwrap() > 5);
/// ```
pub struct Unblock<T> {
    inner: Option<T>,
    pending: Option<Call<Returned<T>>>,
    pool: Option<Pool>,
    read_buf: Vec<u8>,
    read_pos: usize,
    write_buf: Vec<u8>,
    /// An error of a background write, for the next write or flush.
    write_error: Option<io::Error>,
    /// Set by the first write: how `Drop` (which cannot require `T: Write`) hands unflushed
    /// bytes to the pool.
    flush_later: Option<FlushLater<T>>,
    /// Set by the first write: `Write::flush`, for `into_inner`.
    flush_now: Option<FlushNow<T>>,
}

type FlushNow<T> = fn(&mut Unblock<T>) -> io::Result<()>;

type FlushLater<T> = fn(Option<T>, Option<Call<Returned<T>>>, Vec<u8>, Option<Pool>);

fn flush_in_background<T: Write + Send + 'static>(
    inner: Option<T>,
    pending: Option<Call<Returned<T>>>,
    data: Vec<u8>,
    pool: Option<Pool>,
) {
    let pool = match pool {
        Some(p) => p,
        None => match default_pool() {
            Ok(p) => p.clone(),
            Err(_) => return,
        },
    };
    // Not waited for: the call is abandoned at once and runs to its end on a pool thread,
    // where waiting for the operation in flight is an ordinary OS-thread wait.
    let _ = pool.submit(move || {
        let inner = inner.or_else(|| pending.and_then(|mut c| c.wait().ok()).map(|r| r.inner));
        if let Some(mut w) = inner {
            let _ = w.write_all(&data);
            let _ = w.flush();
        }
    });
}

const CHUNK: usize = 64 * 1024;

impl<T> std::fmt::Debug for Unblock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unblock")
            .field("busy", &self.pending.is_some())
            .field("buffered_read", &(self.read_buf.len() - self.read_pos))
            .field("buffered_write", &self.write_buf.len())
            .finish()
    }
}

fn io_error(e: Error) -> io::Error {
    match e {
        Error::TimedOut => io::Error::new(io::ErrorKind::TimedOut, e),
        other => io::Error::other(other),
    }
}

fn lost() -> io::Error {
    io::Error::other("the wrapped object is gone: an earlier operation on it panicked")
}

impl<T: Send + 'static> Unblock<T> {
    /// Wraps `inner`; operations run on the default pool.
    pub fn new(inner: T) -> Unblock<T> {
        Unblock {
            inner: Some(inner),
            pending: None,
            pool: None,
            read_buf: Vec::new(),
            read_pos: 0,
            write_buf: Vec::new(),
            write_error: None,
            flush_later: None,
            flush_now: None,
        }
    }

    /// Wraps `inner`; operations run on `pool`.
    pub fn with_pool(inner: T, pool: Pool) -> Unblock<T> {
        let mut u = Unblock::new(inner);
        u.pool = Some(pool);
        u
    }

    /// The wrapped object back, after waiting for the operation in flight and, for a writer,
    /// flushing what is buffered. Bytes read ahead and not yet consumed are dropped.
    pub fn into_inner(mut self) -> io::Result<T> {
        if let Some(flush) = self.flush_now {
            flush(&mut self)?;
        }
        let prev = self.settle()?;
        self.absorb(prev);
        if let Some(e) = self.write_error.take() {
            return Err(e);
        }
        self.inner.take().ok_or_else(lost)
    }

    /// Waits for the operation in flight and takes its result (the object comes back).
    fn settle(&mut self) -> io::Result<Option<Box<dyn Any + Send>>> {
        let Some(call) = self.pending.as_mut() else {
            return Ok(None);
        };
        match call.wait() {
            Ok(r) => {
                self.pending = None;
                self.inner = Some(r.inner);
                Ok(Some(r.out))
            }
            Err(Error::TimedOut) => Err(io_error(Error::TimedOut)),
            Err(e) => {
                // The call panicked (the object went with it) or the pool is gone.
                self.pending = None;
                Err(io_error(e))
            }
        }
    }

    /// Starts `op` on the object in the pool.
    #[track_caller]
    fn start<R: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> io::Result<()> {
        let site = Location::caller();
        let mut inner = self.inner.take().ok_or_else(lost)?;
        let pool = match &self.pool {
            Some(p) => p,
            None => default_pool().map_err(io_error)?,
        };
        let call = pool.submit_at(site, move || {
            let out: Box<dyn Any + Send> = Box::new(op(&mut inner));
            Returned { inner, out }
        });
        self.pending = Some(call.map_err(io_error)?);
        Ok(())
    }

    /// Runs `op` in the pool and waits for its result.
    #[track_caller]
    fn run<R: Send + 'static>(
        &mut self,
        op: impl FnOnce(&mut T) -> R + Send + 'static,
    ) -> io::Result<R> {
        self.start(op)?;
        let out = self.settle()?.ok_or_else(lost)?;
        out.downcast::<R>()
            .map(|b| *b)
            .map_err(|_| io::Error::other("unexpected result type of a pool call"))
    }

    /// Takes the outcome of a background operation that was not waited for.
    fn absorb(&mut self, out: Option<Box<dyn Any + Send>>) {
        let Some(out) = out else { return };
        if let Ok(wrote) = out.downcast::<io::Result<()>>()
            && let Err(e) = *wrote
        {
            self.write_error.get_or_insert(e);
        }
    }
}

impl<T: Read + Send + 'static> Read for Unblock<T> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.read_pos == self.read_buf.len() {
            // A read cut short by a deadline left its chunk in flight: take it first.
            if let Some(prev) = self.settle()? {
                match prev.downcast::<io::Result<Vec<u8>>>() {
                    Ok(chunk) => {
                        self.read_buf = (*chunk)?;
                        self.read_pos = 0;
                    }
                    Err(other) => self.absorb(Some(other)),
                }
            }
        }
        if self.read_pos == self.read_buf.len() {
            if out.is_empty() {
                return Ok(0);
            }
            let chunk = self.run(|r: &mut T| {
                let mut chunk = vec![0u8; CHUNK];
                r.read(&mut chunk).map(|n| {
                    chunk.truncate(n);
                    chunk
                })
            })??;
            self.read_buf = chunk;
            self.read_pos = 0;
        }
        let n = out.len().min(self.read_buf.len() - self.read_pos);
        out[..n].copy_from_slice(&self.read_buf[self.read_pos..self.read_pos + n]);
        self.read_pos += n;
        Ok(n)
    }
}

impl<T: Write + Send + 'static> Write for Unblock<T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.flush_later = Some(flush_in_background::<T>);
        self.flush_now = Some(<Self as Write>::flush);
        if let Some(e) = self.write_error.take() {
            return Err(e);
        }
        if self.write_buf.len() >= CHUNK {
            // The previous chunk must have left before this one can start.
            let prev = self.settle()?;
            self.absorb(prev);
            if let Some(e) = self.write_error.take() {
                return Err(e);
            }
            let chunk = std::mem::take(&mut self.write_buf);
            self.start(move |w: &mut T| w.write_all(&chunk))?;
        }
        self.write_buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let prev = self.settle()?;
        self.absorb(prev);
        if let Some(e) = self.write_error.take() {
            return Err(e);
        }
        let chunk = std::mem::take(&mut self.write_buf);
        self.run(move |w: &mut T| {
            w.write_all(&chunk)?;
            w.flush()
        })?
    }
}

impl<T> Unblock<T>
where
    T: Iterator + Send + 'static,
    T::Item: Send + 'static,
{
    fn next_item(&mut self) -> io::Result<Option<T::Item>> {
        if let Some(prev) = self.settle()?
            && let Ok(item) = prev.downcast::<Option<T::Item>>()
        {
            return Ok(*item);
        }
        self.run(|it: &mut T| it.next())
    }
}

impl<T> Iterator for Unblock<T>
where
    T: Iterator + Send + 'static,
    T::Item: Send + 'static,
{
    type Item = T::Item;

    /// The next item, fetched on a pool thread. Ends (`None`) when the inner iterator ends;
    /// also if the wait was cut short by a deadline (the item then comes with the next call)
    /// or the inner iterator panicked.
    fn next(&mut self) -> Option<T::Item> {
        self.next_item().ok().flatten()
    }
}

impl<T> Drop for Unblock<T> {
    fn drop(&mut self) {
        if self.write_buf.is_empty() {
            return;
        }
        // Unflushed bytes: hand them to the pool, after the operation in flight, without
        // waiting. Only a writer ever has bytes here.
        if let Some(flush) = self.flush_later.take() {
            let data = std::mem::take(&mut self.write_buf);
            let inner = self.inner.take();
            let pending = self.pending.take();
            flush(inner, pending, data, self.pool.take());
        }
    }
}
