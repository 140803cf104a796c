//! The container's FIFO, read so that no byte leaves the pipe before it is in the store.
//!
//! The engine creates the FIFO, holds it open read-write and writes one frame per write. A plain
//! `read` would move bytes out of the pipe into our memory, where a crash (kill -9, OOM) loses
//! them: the part of a frame already read, and everything read but not yet appended. So this
//! module reads with `tee(2)`, which copies the pipe's content into a private ("scratch") pipe
//! without consuming it, and consumes with `splice(2)` into /dev/null only what the caller says
//! is safely stored. After a crash the restarted plugin finds every unstored byte still in the
//! FIFO, and an incomplete frame is never split between two processes.
//!
//! # Pipe sizes, and the pipe budget
//!
//! The FIFO's capacity is raised to [`WANTED_PIPE_SIZE`] (the kernel's default
//! `/proc/sys/fs/pipe-max-size`): a cheap shock absorber that also halves the engine's blocking
//! writes. The kernel charges every pipe of a user (uid 0 here: dockerd's, the containers', the
//! plugin's) to one budget, `fs.pipe-user-pages-soft` (16384 pages, 64 MiB). A managed plugin
//! has no `CAP_SYS_RESOURCE`, so past that budget `F_SETPIPE_SZ` fails and every pipe it creates
//! gets 2 slots (8 KiB). The FIFO itself is allocated by dockerd (privileged) and keeps at least
//! its 64 KiB; the plugin's own pipes are what shrink. So nothing here depends on a size the
//! kernel may refuse:
//!
//! - **Scratch pipes are shared.** A peek is synchronous (tee, then read the scratch pipe empty),
//!   so one [`ScratchPool`] serves every FIFO: a peek borrows a pipe only while it runs. The
//!   plugin's cost is the FIFO's raise alone (1 MiB a container, not 2), plus one scratch pipe
//!   per thread peeking at the same moment. A pooled pipe found small is raised again now and
//!   then (the budget frees as containers go).
//! - **The frame cap is not a pipe size** (`frame::MAX_PAYLOAD`, 1 MiB; the engine splits lines
//!   at 16 KiB). A frame larger than one peek can show is read by consuming instead
//!   ([`Fifo::available`], [`Fifo::read_into`]), in one of two ways (the pipeline decides):
//!   - it fits in the FIFO: wait until `FIONREAD` says all of it is there, then read exactly
//!     that frame and store it at once. A crash can lose it only in the microseconds between
//!     that read and the append; the FIFO stays aligned on a frame boundary.
//!   - it is larger than the FIFO can ever hold (over the FIFO's size less a page: a write's
//!     first bytes may share the page of the frame before): read it as it comes, keep it in
//!     memory, store it when whole. A crash meanwhile loses that frame, and the restarted plugin
//!     starts reading in its middle and takes its remaining bytes for frames (skipped as
//!     oversized or invalid, possibly with lines behind them). The engine never writes such a
//!     frame: its frames are at most ~16.5 KiB and every FIFO holds at least 64 KiB.
//!
//!   Frames that one peek shows whole (all of them while the scratch pipes have their 1 MiB)
//!   keep the zero-loss tee path.
//!
//! Why not `CAP_SYS_RESOURCE` in config.json: it lets the plugin ignore the pipe budget, and
//! also most other resource limits (raising any rlimit's hard ceiling, RLIMIT_NPROC, disk quotas
//! and ext4's reserved blocks, pipe-max-size, message queue limits, oom_score_adj protection):
//! far more than reading frames needs, granted to a process that parses untrusted input. And it
//! does not enlarge the budget: the plugin's pages are still charged to uid 0, the capability
//! only exempts the plugin from the check. Every page it takes past the budget is a page that
//! root's unprivileged processes (every container running as root, other managed plugins) no
//! longer get: their new pipes then start at 2 slots. Reading frames without the capability
//! costs nothing in the common case and keeps the plugin a good neighbour.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::unix::{AsyncFd, AsyncFdReadyGuard};

/// 1 MiB: the default `pipe-max-size`, the most an unprivileged process may ask for.
pub const WANTED_PIPE_SIZE: usize = 1 << 20;

/// How often a pooled scratch pipe that did not get its size asks again.
const RAISE_RETRY: Duration = Duration::from_secs(5);

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
    /// `n` bytes from the front of the pipe (copied to the buffer, not consumed): all it holds,
    /// or as much as a scratch pipe could take.
    Data(usize),
    /// The pipe is empty and the engine still holds its end.
    Empty,
    /// The pipe is empty and no writer is left: this logging run is over.
    Eof,
}

/// What [`Fifo::read_into`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// `n` bytes moved out of the pipe.
    Data(usize),
    Empty,
    Eof,
}

pub struct Fifo {
    path: PathBuf,
    fd: AsyncFd<OwnedFd>,
    scratch: Arc<ScratchPool>,
    dev_null: File,
}

impl Fifo {
    /// Opens `path` for reading without blocking; refuses anything but a FIFO (checked on the
    /// opened file, so a swapped path cannot slip through).
    pub fn open(path: &Path) -> Result<Self, FifoError> {
        Self::open_sized(path, WANTED_PIPE_SIZE, ScratchPool::shared())
    }

    /// Test only: the FIFO set to `fifo_size` bytes, read through scratch pipes of
    /// `scratch_size`, as the kernel leaves them once the pipe budget is used up (shrinking
    /// needs no privilege).
    #[cfg(test)]
    pub fn open_with_pipe_sizes(
        path: &Path,
        fifo_size: usize,
        scratch_size: usize,
    ) -> Result<Self, FifoError> {
        Self::open_sized(path, fifo_size, Arc::new(ScratchPool::new(scratch_size)))
    }

    fn open_sized(
        path: &Path,
        fifo_size: usize,
        scratch: Arc<ScratchPool>,
    ) -> Result<Self, FifoError> {
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
        set_pipe_size(file.as_raw_fd(), fifo_size);

        let scratch_err = |source| FifoError::Scratch {
            path: path.to_owned(),
            source,
        };
        // A pipe to peek with must exist before the run starts: a process out of descriptors
        // fails StartLogging here, with a message, rather than every peek later.
        let borrowed = scratch.take().map_err(scratch_err)?;
        scratch.give_back(borrowed);
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
            scratch,
            dev_null,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Waits until the engine wrote something (or closed its end) since readiness was last
    /// cleared.
    pub async fn readable(&self) -> io::Result<AsyncFdReadyGuard<'_, OwnedFd>> {
        self.fd.readable().await
    }

    /// Copies the front of the pipe into `buf` (replacing what it held) without consuming it:
    /// everything the pipe holds, or what a scratch pipe could take of it.
    pub fn peek(&self, buf: &mut Vec<u8>) -> io::Result<Peek> {
        let scratch = self.scratch.take()?;
        let peeked = scratch.peek(self.raw(), buf);
        // A scratch pipe goes back only empty: after a failed read it may hold bytes that the
        // next peek would take for the front of another FIFO.
        if let Ok(_) | Err(Dirty::No(_)) = &peeked {
            self.scratch.give_back(scratch);
        }
        peeked.map_err(Dirty::into_error)
    }

    /// Bytes the pipe holds now (`FIONREAD`).
    pub fn available(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to the pointer, which is valid for the call.
        if unsafe { libc::ioctl(self.raw(), libc::FIONREAD, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// The pipe's size now (`F_GETPIPE_SZ`): what it can hold, in whole pages.
    pub fn pipe_size(&self) -> io::Result<usize> {
        // SAFETY: fcntl on a descriptor we own.
        let size = unsafe { libc::fcntl(self.raw(), libc::F_GETPIPE_SZ) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size as usize)
    }

    /// Moves up to `max` bytes out of the pipe onto the end of `buf`: consumed, so they are
    /// the caller's to store (see the module docs for when that is worth the risk).
    pub fn read_into(&self, buf: &mut Vec<u8>, max: usize) -> io::Result<Read> {
        buf.reserve(max);
        loop {
            let spare = buf.spare_capacity_mut();
            // SAFETY: the pointer and length describe the vector's spare capacity, at least
            // `max` bytes; read writes at most that many.
            let n =
                unsafe { libc::read(self.raw(), spare.as_mut_ptr().cast(), max.min(spare.len())) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => return Ok(Read::Empty),
                    _ => return Err(err),
                }
            }
            if n == 0 {
                return Ok(Read::Eof);
            }
            let n = n as usize;
            // SAFETY: read initialised the first n bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(Read::Data(n));
        }
    }

    /// Removes the first `n` bytes from the pipe: they are stored (or deliberately skipped).
    pub fn consume(&self, mut n: usize) -> io::Result<()> {
        while n > 0 {
            // SAFETY: the FIFO and /dev/null are open descriptors owned by self.
            let moved = unsafe {
                libc::splice(
                    self.raw(),
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

/// The private pipes `tee` copies into, shared by every FIFO (see the module docs). A peek
/// takes one (a new one when none is free) and gives it back empty; so the pool holds as many
/// pipes as peeks ever ran at the same moment: at most one per runtime thread.
pub struct ScratchPool {
    /// The size each pipe asks for.
    wanted: usize,
    idle: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    pub fn new(wanted: usize) -> Self {
        Self {
            wanted,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The process's pool, of [`WANTED_PIPE_SIZE`] pipes.
    pub fn shared() -> Arc<ScratchPool> {
        static SHARED: OnceLock<Arc<ScratchPool>> = OnceLock::new();
        Arc::clone(SHARED.get_or_init(|| Arc::new(ScratchPool::new(WANTED_PIPE_SIZE))))
    }

    fn take(&self) -> io::Result<Scratch> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(mut scratch) = idle else {
            return Scratch::new(self.wanted);
        };
        if scratch.capacity < self.wanted && scratch.sized_at.elapsed() >= RAISE_RETRY {
            scratch.capacity = set_pipe_size(scratch.read.as_raw_fd(), self.wanted);
            scratch.sized_at = Instant::now();
        }
        Ok(scratch)
    }

    fn give_back(&self, scratch: Scratch) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(scratch);
    }
}

/// One private pipe: its read end, its write end, and the bytes it holds at most.
struct Scratch {
    read: File,
    write: OwnedFd,
    capacity: usize,
    /// When its size was last asked for.
    sized_at: Instant,
}

/// A failed peek, and whether the scratch pipe may hold bytes since.
enum Dirty {
    No(io::Error),
    Yes(io::Error),
}

impl Dirty {
    fn into_error(self) -> io::Error {
        match self {
            Dirty::No(e) | Dirty::Yes(e) => e,
        }
    }
}

impl Scratch {
    fn new(wanted: usize) -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills both descriptors on success; we take ownership of each once.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: freshly created, owned by nobody else.
        let (read, write) = unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let capacity = set_pipe_size(read.as_raw_fd(), wanted);
        if capacity < wanted {
            tracing::info!(
                pipe_bytes = capacity,
                "a private pipe got {capacity} bytes, the kernel refused more: root's pipe budget \
                 (fs.pipe-user-pages-soft) is used up on this host; frames longer than that are \
                 read by consuming (see the README)"
            );
        }
        Ok(Self {
            read,
            write,
            capacity,
            sized_at: Instant::now(),
        })
    }

    /// Tees the front of `fifo` into this pipe and reads it out into `buf`, leaving this pipe
    /// empty.
    fn peek(&self, fifo: RawFd, buf: &mut Vec<u8>) -> Result<Peek, Dirty> {
        // SAFETY: both descriptors are open pipes; tee only moves page references.
        let n = unsafe {
            libc::tee(
                fifo,
                self.write.as_raw_fd(),
                self.capacity,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock => Ok(Peek::Empty),
                _ => Err(Dirty::No(err)),
            };
        }
        let n = n as usize;
        if n == 0 {
            return Ok(Peek::Eof);
        }
        buf.clear();
        // This pipe holds exactly the n bytes tee put there; read them all out so the next tee
        // starts on an empty pipe. read_to_end fills spare capacity without zeroing it first (a
        // memset of up to 1 MiB a round otherwise) and retries EINTR.
        buf.reserve(n);
        match io::Read::read_to_end(&mut io::Read::take(&self.read, n as u64), buf) {
            Ok(filled) if filled == n => Ok(Peek::Data(n)),
            Ok(filled) => Err(Dirty::Yes(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the private pipe gave {filled} of the {n} bytes copied into it"),
            ))),
            Err(err) => Err(Dirty::Yes(err)),
        }
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

/// Asks for `size` and returns the capacity the pipe really has: past the pipe budget an
/// unprivileged process is refused (EPERM) and keeps what it has.
fn set_pipe_size(fd: RawFd, size: usize) -> usize {
    // SAFETY: fcntl on a descriptor we own; failure leaves the pipe as it was.
    unsafe {
        libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int);
        let size = libc::fcntl(fd, libc::F_GETPIPE_SZ);
        // 8 KiB: the least the kernel gives a pipe (2 pages) once the budget is used up.
        if size > 0 {
            size as usize
        } else {
            8 << 10
        }
    }
}

/// The size of a pipe buffer's page.
pub fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
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
        assert!(fifo.pipe_size().unwrap() >= 64 << 10);
    }

    /// A small scratch pipe shows the front of the pipe only; FIONREAD tells what is there, and
    /// read_into takes exactly what is asked.
    #[tokio::test]
    async fn a_small_scratch_pipe_shows_the_front_and_the_rest_is_read_by_consuming() {
        let dir = tempfile::tempdir().unwrap();
        let path = make_fifo(dir.path());
        let fifo = Fifo::open_with_pipe_sizes(&path, 1 << 20, 8 << 10).unwrap();
        let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        writer.write_all(&data).unwrap();
        let mut buf = Vec::new();
        let Peek::Data(n) = fifo.peek(&mut buf).unwrap() else {
            panic!("data expected")
        };
        assert!(
            n <= 8 << 10,
            "a 2-slot pipe shows at most two pages, not {n}"
        );
        assert_eq!(buf, data[..n]);
        assert_eq!(
            fifo.available().unwrap(),
            data.len(),
            "peeking consumed nothing"
        );
        let mut taken = b"prefix".to_vec();
        assert_eq!(
            fifo.read_into(&mut taken, 30_000).unwrap(),
            Read::Data(30_000)
        );
        assert_eq!(taken[6..], data[..30_000]);
        assert_eq!(fifo.available().unwrap(), 20_000);
        assert_eq!(
            fifo.read_into(&mut taken, 1 << 20).unwrap(),
            Read::Data(20_000)
        );
        assert_eq!(fifo.read_into(&mut taken, 10).unwrap(), Read::Empty);
        drop(writer);
        assert_eq!(fifo.read_into(&mut taken, 10).unwrap(), Read::Eof);
    }

    /// Two FIFOs peeked one after the other share one scratch pipe, and neither sees the
    /// other's bytes.
    #[tokio::test]
    async fn fifos_share_scratch_pipes_and_never_see_each_others_bytes() {
        let pool = Arc::new(ScratchPool::new(64 << 10));
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let mut fifos = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let path = make_fifo(dir.path());
            let fifo = Fifo::open_sized(&path, 64 << 10, Arc::clone(&pool)).unwrap();
            let mut writer = OpenOptions::new().write(true).open(&path).unwrap();
            writer.write_all(format!("fifo {i}").as_bytes()).unwrap();
            fifos.push((fifo, writer));
        }
        let mut buf = Vec::new();
        for round in 0..3 {
            for (i, (fifo, _)) in fifos.iter().enumerate() {
                assert_eq!(fifo.peek(&mut buf).unwrap(), Peek::Data(6), "round {round}");
                assert_eq!(buf, format!("fifo {i}").as_bytes());
            }
        }
        assert_eq!(
            pool.idle.lock().unwrap().len(),
            1,
            "one pipe served every peek"
        );
    }
}
