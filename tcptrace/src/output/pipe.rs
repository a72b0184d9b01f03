//! Writing to a pipe or a socket (`| jq`, a log shipper) so that its reader
//! only ever sees whole lines, however long it stalls and whenever tcptrace
//! stops.
//!
//! A blocking `write_all` of a 64 KiB chunk into a pipe whose reader
//! stalled leaves the chunk half-written, cut at whatever byte filled the
//! pipe; if tcptrace then stops, the reader finds a line cut short (and
//! `jq` fails on it). Here the writer waits until the pipe has room
//! (`poll` reports `POLLOUT`: a free slot) and then writes whole lines, at
//! most `PIPE_BUF` bytes at once: such a write into a free slot neither
//! blocks nor is split (POSIX makes writes of up to `PIPE_BUF` bytes to a
//! pipe atomic). The wait is short, so a writer told to stop does so at the
//! next line boundary, leaving the rest counted as dropped.

use std::{
    io,
    os::fd::RawFd,
    sync::{atomic::Ordering, mpsc::Receiver},
};

use super::{Chunk, Shared, count_lines, next_chunk};

/// Bytes a pipe takes atomically (4096 on Linux).
const PIPE_BUF: usize = libc::PIPE_BUF;

/// How long the writer waits for room before it checks whether it must
/// stop.
pub(super) const ROOM_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

/// A FIFO or a socket (fstat): a reader that may stall.
pub(super) fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: all-zero is a valid stat; fstat fills it or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a stat of the right size.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFIFO | libc::S_IFSOCK)
}

/// The writer thread for a pipe or socket: chunks in order, each in pieces
/// of whole lines written when there is room.
pub(super) fn write_chunks(fd: RawFd, rx: &Receiver<Chunk>, shared: &Shared) {
    while let Some(chunk) = next_chunk(Some(fd), rx, shared) {
        let bytes = &chunk.bytes;
        let mut at = 0;
        while at < bytes.len() {
            // Between two lines a stop takes effect; inside a line (one
            // longer than PIPE_BUF, or a socket's short write) the rest of
            // it is written first, for as long as tcptrace waits.
            let between_lines = at == 0 || bytes[at - 1] == b'\n';
            if between_lines && shared.stop.load(Ordering::Relaxed) {
                return;
            }
            match room(fd) {
                Room::Gone => {
                    shared.closed.store(true, Ordering::Relaxed);
                    return;
                }
                Room::NotYet => continue,
                Room::Ready => {}
            }
            let piece = piece(&bytes[at..]);
            // SAFETY: a valid buffer of the length given.
            let n = unsafe { libc::write(fd, piece.as_ptr().cast(), piece.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    // Someone else's O_NONBLOCK, or another writer that
                    // took the room first: wait for room again.
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => continue,
                    _ => return shared.failed(e),
                }
            }
            let n = n as usize;
            at += n;
            shared.wrote(n as u64, count_lines(&piece[..n]), at == bytes.len());
        }
    }
}

/// The next write: the whole lines at the start of `rest` that fit in
/// `PIPE_BUF` bytes. A first line longer than that cannot be written
/// atomically at all: it alone is written in pieces (`PIPE_BUF` bytes at a
/// time), the one case where a reader may see part of a line before the
/// rest, and the one case where stopping may leave it cut.
fn piece(rest: &[u8]) -> &[u8] {
    if rest.len() <= PIPE_BUF {
        return rest;
    }
    let window = &rest[..PIPE_BUF];
    match memchr::memrchr(b'\n', window) {
        Some(end) => &rest[..=end],
        None => window,
    }
}

enum Room {
    Ready,
    NotYet,
    /// The reader closed its end (POLLERR/POLLHUP), or the fd is bad.
    Gone,
}

fn room(fd: RawFd) -> Room {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ROOM_WAIT.as_millis() as i32) };
    if n < 1 {
        return Room::NotYet; // timed out, or EINTR
    }
    if pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
        Room::Gone
    } else if pfd.revents & libc::POLLOUT != 0 {
        Room::Ready
    } else {
        Room::NotYet
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
        time::{Duration, Instant},
    };

    use super::{super::OutputQueue, *};

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: valid array for pipe2(2).
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: two fresh fds nobody else owns.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (r.into(), w.into())
    }

    #[test]
    fn pieces_are_whole_lines_of_at_most_pipe_buf_bytes() {
        let lines = b"aaa\nbbb\n".repeat(1000);
        let p = piece(&lines);
        assert!(p.len() <= PIPE_BUF && p.ends_with(b"\n"), "{}", p.len());
        assert_eq!(piece(b"short\n"), b"short\n");
        // Only a line that cannot fit is cut.
        let long = [b'x'; PIPE_BUF * 2];
        assert_eq!(piece(&long).len(), PIPE_BUF);
    }

    #[test]
    fn a_stalled_pipe_holds_only_whole_lines_and_every_line_is_counted_once() {
        let (mut reader, writer) = pipe();
        assert!(is_pipe(writer.as_raw_fd()));
        let fd = writer.as_raw_fd();
        let mut q = OutputQueue::new(writer, Some(fd)).unwrap();
        // Far more than the pipe (64 KiB) and the queue hold, in lines of
        // many lengths, one of them longer than PIPE_BUF; nobody reads.
        let mut rendered = 0u64;
        for i in 0..40_000usize {
            let len = if i == 7 {
                3 * PIPE_BUF
            } else {
                10 + (i * 37) % 700
            };
            let line = format!("{i} {}\n", "y".repeat(len));
            // Renderers write a line in several pieces.
            let (a, b) = line.as_bytes().split_at(line.len() / 2);
            q.write_all(a).unwrap();
            q.write_all(b).unwrap();
            rendered += 1;
            // A small chunk first: the big one after it no longer fits
            // the pipe whole, and a blocking writer would cut it.
            if i % 1000 == 3 {
                q.flush().unwrap();
            }
        }
        let start = Instant::now();
        let stats = q.finish(Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(1), "{stats:?}");
        assert_eq!(
            stats.written_lines + stats.dropped_lines,
            rendered,
            "every line rendered is written or dropped: {stats:?}"
        );
        assert!(stats.dropped_lines > 0, "{stats:?}");
        // What the pipe holds now, as the reader finds it once tcptrace has
        // exited: exactly that, since reading more would let a writer
        // still blocked in write(2) go on (an exit would have ended it).
        let mut held: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        assert_eq!(
            unsafe { libc::ioctl(reader.as_raw_fd(), libc::FIONREAD, &mut held) },
            0
        );
        let mut seen = vec![0; held as usize];
        reader.read_exact(&mut seen).unwrap();
        assert_eq!(seen.len() as u64, stats.written_bytes, "{stats:?}");
        assert!(seen.ends_with(b"\n"), "a line was cut: {stats:?}");
        let lines: Vec<&[u8]> = seen.split_inclusive(|&b| b == b'\n').collect();
        assert_eq!(lines.len() as u64, stats.written_lines, "{stats:?}");
        // In order, from the first, each whole.
        for (i, line) in lines.iter().enumerate() {
            let text = std::str::from_utf8(line).unwrap();
            let (n, rest) = text.split_once(' ').unwrap();
            assert_eq!(n, i.to_string());
            assert!(rest.trim_end().bytes().all(|b| b == b'y'), "{text}");
        }
    }

    #[test]
    fn a_reader_that_keeps_up_gets_everything() {
        let (mut reader, writer) = pipe();
        let fd = writer.as_raw_fd();
        let mut q = OutputQueue::new(writer, Some(fd)).unwrap();
        let reading = std::thread::spawn(move || {
            let mut seen = Vec::new();
            reader.read_to_end(&mut seen).unwrap();
            seen
        });
        let mut expected = Vec::new();
        for i in 0..5_000 {
            // Now and then a line longer than PIPE_BUF.
            let len = if i % 500 == 0 { 9000 } else { i % 300 };
            let line = format!("{i} {}\n", "z".repeat(len));
            expected.extend_from_slice(line.as_bytes());
            q.write_all(line.as_bytes()).unwrap();
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let stats = q.finish(Duration::from_secs(10));
        drop(q);
        assert_eq!(stats.dropped_lines, 0, "{stats:?}");
        assert_eq!(stats.written_lines, 5_000, "{stats:?}");
        assert!(reading.join().unwrap() == expected, "{stats:?}");
    }
}
