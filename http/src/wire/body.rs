//! Message bodies on the wire: reading one delimited by a length, by the chunked coding or by
//! the end of the connection ([`Decoder`]), and writing chunks ([`write_chunk`]).

use std::io::{self, Read, Write};

use crate::wire::head::Framing;
use crate::wire::{Stream, Wire};

/// The most bytes a chunk-size line or the trailer section may take.
const MAX_CHUNK_LINE: usize = 1024;
const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// So many bytes left of a length-delimited body.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// So many bytes left of the current chunk.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// The trailer section (ignored), `n` bytes of it read so far.
    Trailers(usize),
    /// Until the connection ends.
    Close,
    Done,
}

/// Reads one body from a [`Wire`], as its framing says.
#[derive(Debug)]
pub(crate) struct Decoder {
    state: State,
}

fn bad(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

fn eof() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the connection ended in the middle of a body",
    )
}

impl Decoder {
    pub(crate) fn new(framing: Framing) -> Decoder {
        Decoder {
            state: match framing {
                Framing::Empty | Framing::Length(0) => State::Done,
                Framing::Length(n) => State::Length(n),
                Framing::Chunked => State::ChunkSize,
                Framing::Close => State::Close,
            },
        }
    }

    /// Whether the whole body has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes of the body known to be left (a length body's rest; 0 when unknown).
    pub(crate) fn known_left(&self) -> u64 {
        match self.state {
            State::Length(n) | State::ChunkData(n) => n,
            _ => 0,
        }
    }

    /// Reads body bytes into `buf`: `Ok(0)` at the body's end.
    pub(crate) fn read<S: Read + Write>(
        &mut self,
        wire: &mut Wire<S>,
        buf: &mut [u8],
    ) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.state {
                State::Done => return Ok(0),
                State::Length(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = wire.read_into(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.state = match left - n as u64 {
                        0 => State::Done,
                        rest => State::Length(rest),
                    };
                    return Ok(n);
                }
                State::Close => {
                    let n = wire.read_into(buf)?;
                    if n == 0 {
                        self.state = State::Done;
                    }
                    return Ok(n);
                }
                State::ChunkData(left) => {
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = wire.read_into(&mut buf[..want])?;
                    if n == 0 {
                        return Err(eof());
                    }
                    self.state = match left - n as u64 {
                        0 => State::ChunkEnd,
                        rest => State::ChunkData(rest),
                    };
                    return Ok(n);
                }
                State::ChunkSize => {
                    let (used, size) = loop {
                        match chunk_size(wire.buffered())? {
                            Some(done) => break done,
                            None => {
                                if wire.buffered().len() > MAX_CHUNK_LINE {
                                    return Err(bad("a chunk-size line is too long"));
                                }
                                if wire.fill()? == 0 {
                                    return Err(if wire.is_full() {
                                        bad("a chunk-size line is too long")
                                    } else {
                                        eof()
                                    });
                                }
                            }
                        }
                    };
                    wire.consume(used);
                    self.state = match size {
                        0 => State::Trailers(0),
                        n => State::ChunkData(n),
                    };
                }
                State::ChunkEnd => {
                    while wire.buffered().len() < 2 {
                        if wire.fill()? == 0 {
                            return Err(eof());
                        }
                    }
                    if &wire.buffered()[..2] != b"\r\n" {
                        return Err(bad("a chunk's data is not followed by CRLF"));
                    }
                    wire.consume(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers(seen) => {
                    // Trailer fields are read and dropped, up to an empty line; every line ends
                    // with CRLF, as the chunk lines do.
                    let line = loop {
                        if let Some(at) = wire.buffered().iter().position(|b| *b == b'\n') {
                            if at == 0 || wire.buffered()[at - 1] != b'\r' {
                                return Err(bad("a trailer line does not end with CRLF"));
                            }
                            break at + 1;
                        }
                        if seen + wire.buffered().len() > MAX_TRAILERS {
                            return Err(bad("the trailer section is too large"));
                        }
                        if wire.fill()? == 0 {
                            return Err(if wire.is_full() {
                                bad("the trailer section is too large")
                            } else {
                                eof()
                            });
                        }
                    };
                    let empty = line == 2;
                    wire.consume(line);
                    if seen + line > MAX_TRAILERS {
                        return Err(bad("the trailer section is too large"));
                    }
                    self.state = if empty {
                        State::Done
                    } else {
                        State::Trailers(seen + line)
                    };
                }
            }
        }
    }
}

/// Parses a chunk-size line at the start of `buf` (RFC 9112, section 7.1): at least one hex
/// digit, optional extensions of visible characters (ignored), CRLF. `Ok(None)` while the
/// line is incomplete; otherwise the line's length and the size. Stricter than parsers that
/// take a bare LF or an empty size, so that a proxy in front cannot read the body otherwise.
fn chunk_size(buf: &[u8]) -> io::Result<Option<(usize, u64)>> {
    let Some(lf) = buf.iter().position(|b| *b == b'\n') else {
        // A byte no chunk-size line may hold is refused before the line is complete.
        if let Some(b) = buf
            .iter()
            .find(|b| b.is_ascii_control() && **b != b'\r' && **b != b'\t')
        {
            return Err(bad(if *b == 0 {
                "a NUL in a chunk-size line"
            } else {
                "a control character in a chunk-size line"
            }));
        }
        return Ok(None);
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(bad("a chunk-size line does not end with CRLF"));
    }
    let line = &buf[..lf - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("a chunk-size line without a size"));
    }
    if digits > 15 {
        return Err(bad("a chunk size too large"));
    }
    let rest = &line[digits..];
    let ext = rest.trim_ascii_start();
    if !(rest.is_empty() || ext.starts_with(b";")) {
        return Err(bad("malformed chunk size"));
    }
    if ext.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(bad("a control character in a chunk extension"));
    }
    let size = line[..digits].iter().fold(0u64, |n, d| {
        n * 16 + (*d as char).to_digit(16).unwrap_or(0) as u64
    });
    Ok(Some((lf + 1, size)))
}

/// Appends one chunk of `data` (nothing for empty data: an empty chunk ends the body).
pub(crate) fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the last chunk, with no trailers.
pub(crate) fn write_last_chunk(out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n\r\n");
}

/// Sends what `reader` gives as a body, a piece at a time: chunked, the last chunk left in
/// the write buffer; or, not `chunked` (to an HTTP/1.0 client, ended by the close), as it is.
/// Returns the body's length.
pub(crate) fn send_stream<S: Stream>(
    wire: &mut Wire<S>,
    reader: &mut (dyn Read + Send),
    chunked: bool,
) -> io::Result<u64> {
    let mut sent = 0u64;
    wire.flush()?;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        sent += n as u64;
        if chunked {
            write_chunk(&mut wire.out, &buf[..n]);
        } else {
            wire.out.extend_from_slice(&buf[..n]);
        }
        wire.flush()?;
    }
    if chunked {
        write_last_chunk(&mut wire.out);
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket whose reads return the given pieces one at a time.
    struct Pieces(Vec<Vec<u8>>);

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let mut piece = self.0.remove(0);
            let n = piece.len().min(buf.len());
            buf[..n].copy_from_slice(&piece[..n]);
            if n < piece.len() {
                self.0.insert(0, piece.split_off(n));
            }
            Ok(n)
        }
    }

    impl Write for Pieces {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn decode(framing: Framing, input: &[u8], split: usize) -> (io::Result<Vec<u8>>, Vec<u8>) {
        let pieces = input.chunks(split.max(1)).map(<[u8]>::to_vec).collect();
        let mut wire = Wire::new(Pieces(pieces), 16, 64);
        let mut d = Decoder::new(framing);
        let mut body = Vec::new();
        let mut buf = [0u8; 7];
        let result = loop {
            match d.read(&mut wire, &mut buf) {
                Ok(0) => break Ok(body),
                Ok(n) => body.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        let mut rest = wire.buffered().to_vec();
        while wire.fill().unwrap() > 0 {
            rest = wire.buffered().to_vec();
        }
        (result, rest)
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads_split_and_stop_at_their_end() {
        let input = b"5;ext=1\r\nhello\r\n1\r\n \r\n6\r\nworld!\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        for split in 1..input.len() {
            let (body, rest) = decode(Framing::Chunked, input, split);
            assert_eq!(body.unwrap(), b"hello world!", "split {split}");
            assert_eq!(
                rest, b"NEXT",
                "split {split}: the next request stays buffered"
            );
        }
        let (body, rest) = decode(Framing::Length(5), b"helloNEXT", 3);
        assert_eq!((body.unwrap(), rest), (b"hello".to_vec(), b"NEXT".to_vec()));
    }

    #[test]
    fn malformed_or_cut_bodies_are_errors_not_hangs() {
        for (input, kind) in [
            (&b"zz\r\nhello\r\n0\r\n\r\n"[..], io::ErrorKind::InvalidData),
            (b"5\r\nhelloXX0\r\n\r\n", io::ErrorKind::InvalidData),
            (b"5\r\nhel", io::ErrorKind::UnexpectedEof),
            (b"ffffffffffffffffff\r\n", io::ErrorKind::InvalidData),
            // An empty size, a bare LF, control characters: refused, not read as the end.
            (b"\r\nhello", io::ErrorKind::InvalidData),
            (b";ext\r\nhello", io::ErrorKind::InvalidData),
            (b"5\nhello\r\n0\r\n\r\n", io::ErrorKind::InvalidData),
            (
                b"5;a\x01b\r\nhello\r\n0\r\n\r\n",
                io::ErrorKind::InvalidData,
            ),
            (b"5 x\r\nhello\r\n0\r\n\r\n", io::ErrorKind::InvalidData),
            (b"5\r\nhello\r\n0\r\nX: y\n\r\n", io::ErrorKind::InvalidData),
            (b"5\r\nhello\r\n0\r\n\n", io::ErrorKind::InvalidData),
        ] {
            let (body, _) = decode(Framing::Chunked, input, 4);
            assert_eq!(
                body.unwrap_err().kind(),
                kind,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let endless = vec![b'1'; 4096];
        let (body, _) = decode(Framing::Chunked, &endless, 64);
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let (body, _) = decode(Framing::Length(10), b"short", 2);
        assert_eq!(body.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn chunks_round_trip() {
        let mut out = Vec::new();
        write_chunk(&mut out, b"hello");
        write_chunk(&mut out, b"");
        write_chunk(&mut out, &[b'x'; 300]);
        write_last_chunk(&mut out);
        let (body, _) = decode(Framing::Chunked, &out, 5);
        let mut want = b"hello".to_vec();
        want.extend_from_slice(&[b'x'; 300]);
        assert_eq!(body.unwrap(), want);
    }
}
