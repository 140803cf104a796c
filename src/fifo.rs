//! The container's FIFO, read so that no byte leaves the pipe before it is in the store.
//!
//! The engine creates the FIFO, holds it open read-write and writes one frame per write. A plain
//! `read` would move bytes out of the pipe into our memory, where a crash (kill -9, OOM) loses
//! them: the part of a frame already read, and everything read but not yet appended. So this
//! module reads with `tee(2)`, which copies the pipe's content into a private pipe without
//! consuming it, and consumes with `splice(2)` into /dev/null only what the caller says is safely
//! stored. After a crash the restarted plugin finds every unstored byte still in the FIFO, and an
//! incomplete frame is never split between two processes.
//!
//! The FIFO's capacity is raised to [`WANTED_PIPE_SIZE`] (the kernel's default
//! `/proc/sys/fs/pipe-max-size`, allowed without privileges): a cheap shock absorber that also
//! halves the engine's blocking writes. A frame larger than the capacity could never be seen
//! whole without consuming, so the capacity is also the frame cap (the engine splits lines at
//! 16 KiB, far below it).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// 1 MiB: the default `pipe-max-size`, the most an unprivileged process may ask for.
pub const WANTED_PIPE_SIZE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FifoError {
    #[error("File {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "File {path} is not a FIFO (it is {kind}); the engine always passes a FIFO it created"
    )]
    NotFifo { path: PathBuf, kind: &'static str },
    #[error("cannot create the private pipe for reading {path}: {source}")]
    Scratch { path: PathBuf, source: io::Error },
}

/// What [`Fifo::peek`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peek {
    /// `n` bytes, the pipe's whole current content (copied to the buffer, not consumed).
    Data(usize),
    /// The pipe is empty and the engine still holds its end.
    Empty,
    /// The pipe is empty and no writer is left: this logging run is over.
    Eof,
}

pub struct Fifo {
    path: PathBuf,
    fd: AsyncFd<OwnedFd>,
    /// Read end and write end of the private pipe `tee` copies into.
    scratch_read: File,
    scratch_write: OwnedFd,
    dev_null: File,
    capacity: usize,
}

impl Fifo {
    /// Opens `path` for reading without blocking; refuses anything but a FIFO (checked on the
    /// opened file, so a swapped path cannot slip through).
    pub fn open(path: &Path) -> Result<Self, FifoError> {
        let open_err = |source| FifoError::Open {
            path: path.to_owned(),
            source,
        };
        // Checked before opening too: opening a FIFO without O_NONBLOCK-safe semantics is fine,
        // but opening some device nodes has side effects we do not want to trigger.
        let meta = std::fs::metadata(path).map_err(open_err)?;
        check_is_fifo(path, &meta.file_type())?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_err)?;
        check_is_fifo(path, &file.metadata().map_err(open_err)?.file_type())?;
        let capacity = raise_pipe_size(file.as_raw_fd());

        let scratch_err = |source| FifoError::Scratch {
            path: path.to_owned(),
            source,
        };
        let (scratch_read, scratch_write) = private_pipe().map_err(scratch_err)?;
        let scratch_capacity = raise_pipe_size(scratch_read.as_raw_fd());
        let dev_null = OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(scratch_err)?;
        // SAFETY: the OwnedFd is moved into the AsyncFd and never replaced, so the descriptor
        // stays open and the same for the AsyncFd's whole life.
        let fd = unsafe {
            AsyncFd::register_with_interest(OwnedFd::from(file), tokio::io::Interest::READABLE)
        }
        .map_err(|e| open_err(e.into()))?;
        Ok(Self {
            path: path.to_owned(),
            fd,
            scratch_read,
            scratch_write,
            dev_null,
            capacity: capacity.min(scratch_capacity),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The most bytes one peek can see: the largest frame that can be read whole.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Waits until the engine wrote something (or closed its end) since readiness was last
    /// cleared.
    pub async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
        self.fd.readable().await
    }

    /// Copies the pipe's whole content into `buf` (replacing what it held) without consuming it.
    pub fn peek(&self, buf: &mut Vec<u8>) -> io::Result<Peek> {
        // SAFETY: both descriptors are open pipes owned by self; tee only moves page references.
        let n = unsafe {
            libc::tee(
                self.fd.get_ref().as_raw_fd(),
                self.scratch_write.as_raw_fd(),
                self.capacity,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(Peek::Empty),
                _ => Err(err),
            };
        }
        let n = n as usize;
        if n == 0 {
            return Ok(Peek::Eof);
        }
        buf.clear();
        // The private pipe holds exactly the n bytes tee put there; read them all out so the
        // next tee starts on an empty pipe. read_to_end fills spare capacity without zeroing it
        // first (a memset of up to 1 MiB a round otherwise) and retries EINTR.
        buf.reserve(n);
        let filled = io::Read::read_to_end(&mut io::Read::take(&self.scratch_read, n as u64), buf)?;
        Ok(Peek::Data(filled))
    }

    /// Removes the first `n` bytes from the pipe: they are stored (or deliberately skipped).
    pub fn consume(&self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            // SAFETY: the FIFO and /dev/null are open descriptors owned by self.
            let moved = unsafe {
                libc::splice(
                    self.fd.get_ref().as_raw_fd(),
                    std::ptr::null_mut(),
                    self.dev_null.as_raw_fd(),
                    std::ptr::null_mut(),
                    n,
                    libc::SPLICE_F_NONBLOCK,
                )
            };
            if moved < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if moved == 0 {
                // Only possible if someone else drained the pipe; nothing left to remove.
                return Ok(());
            }
            n -= moved as usize;
        }
        Ok(())
    }
}

fn check_is_fifo(path: &Path, file_type: &std::fs::FileType) -> Result<(), FifoError> {
    if file_type.is_fifo() {
        return Ok(());
    }
    let kind = if file_type.is_dir() {
        "a directory"
    } else if file_type.is_file() {
        "a regular file"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a FIFO"
    };
    Err(FifoError::NotFifo {
        path: path.to_owned(),
        kind,
    })
}

/// Asks for [`WANTED_PIPE_SIZE`] and returns the capacity the pipe really has.
fn raise_pipe_size(fd: RawFd) -> usize {
    // SAFETY: fcntl on a descriptor we own; failure leaves the pipe as it was.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, WANTED_PIPE_SIZE as libc::c_int);
        let size = libc::fcntl(fd, libc::F_GETPIPE_SZ);
        // 64 KiB is the kernel's default and floor for a pipe we could not resize.
        if size > 0 {
            size as usize
        } else {
            64 << 10
        }
    }
}

fn private_pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills both descriptors on success; we take ownership of each once.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: freshly created, owned by nobody else.
    unsafe { Ok((File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn make_fifo(dir: &Path) -> PathBuf {
        let path = dir.join("fifo");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        path
    }

    #[tokio::test]
    async fn peek_does_not_consume_and_consume_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = make_fifo(dir.path());
        let fifo = Fifo::open(&path).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
        let mut buf = Vec::new();
        assert_eq!(fifo.peek(&mut buf).unwrap(), Peek::Empty);
        writer.write_all(b"hello world").unwrap();
        assert_eq!(fifo.peek(&mut buf).unwrap(), Peek::Data(11));
        assert_eq!(
            fifo.peek(&mut buf).unwrap(),
            Peek::Data(11),
            "tee leaves data in place"
        );
        fifo.consume(6).unwrap();
        assert_eq!(fifo.peek(&mut buf).unwrap(), Peek::Data(5));
        assert_eq!(buf, b"world");
        fifo.consume(5).unwrap();
        drop(writer);
        assert_eq!(fifo.peek(&mut buf).unwrap(), Peek::Eof);
    }

    #[tokio::test]
    async fn refuses_what_is_not_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("regular");
        std::fs::write(&file, b"x").unwrap();
        for path in [file.as_path(), dir.path(), Path::new("/dev/zero")] {
            match Fifo::open(path) {
                Err(FifoError::NotFifo { .. }) => {}
                Err(other) => panic!("{path:?}: wrong error {other}"),
                Ok(_) => panic!("{path:?} accepted"),
            }
        }
        assert!(matches!(
            Fifo::open(&dir.path().join("missing")),
            Err(FifoError::Open { .. })
        ));
    }

    #[tokio::test]
    async fn capacity_is_raised() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = Fifo::open(&make_fifo(dir.path())).unwrap();
        assert!(fifo.capacity() >= 64 << 10);
    }
}
