//! Starting a worker: fork and exec, with the listening sockets at descriptors 3, 4, ... and
//! `LISTEN_PID` set to the worker's own pid, which only the child knows: everything is
//! prepared before the fork, and the child only moves descriptors, writes its pid into a
//! buffer made for it, resets its signal state and execs (async-signal-safe calls only: the
//! master may have other threads).
//!
//! It uses nothing else of the crate.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why a worker did not start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The program is not found or cannot be run.
    #[error("cannot run {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// Why (from the child's `execve`, or the search of `PATH`).
        source: io::Error,
    },
    /// An argument or variable holds a NUL byte.
    #[error("{0:?} holds a NUL byte")]
    Nul(String),
    /// A system call of the master failed (out of processes or descriptors).
    #[error("cannot start a worker: {0}")]
    System(#[source] io::Error),
}

/// The worker program, resolved once (a path, or a name found in `PATH`).
#[derive(Debug)]
pub struct Program {
    path: CString,
    argv: Vec<CString>,
    shown: String,
}

impl Program {
    /// Resolves `command[0]` (a path, or a name looked up in `PATH`).
    pub fn resolve(command: &[String]) -> Result<Program, SpawnError> {
        let shown = command.first().cloned().unwrap_or_default();
        let path = find(&shown).ok_or_else(|| SpawnError::Exec {
            program: shown.clone(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "no such executable (a name is looked up in PATH)",
            ),
        })?;
        let argv = command
            .iter()
            .map(|a| cstring(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Program {
            path: cstring(path.as_os_str().as_bytes())?,
            argv,
            shown,
        })
    }

    /// The master's own binary, as it was started (its path now, so that a binary replaced
    /// on disk is the one an upgrade runs), with its arguments.
    pub fn this_master() -> Result<Program, SpawnError> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        let first = args.first().cloned().unwrap_or_default();
        let shown = first.to_string_lossy().into_owned();
        let path = if first.as_bytes().contains(&b'/') {
            std::env::current_dir()
                .map(|d| d.join(&first))
                .map_err(SpawnError::System)?
        } else {
            find(&shown).ok_or_else(|| SpawnError::Exec {
                program: shown.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "not found in PATH"),
            })?
        };
        Ok(Program {
            path: cstring(path.as_os_str().as_bytes())?,
            argv: args
                .iter()
                .map(|a| cstring(a.as_bytes()))
                .collect::<Result<Vec<_>, _>>()?,
            shown,
        })
    }

    /// What the program is called in messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

fn cstring(bytes: &[u8]) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Nul(String::from_utf8_lossy(bytes).into_owned()))
}

fn executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find(program: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Starts `program` with the master's environment minus what the master itself was given
/// by its own supervisor (`LISTEN_*`, `NOTIFY_SOCKET`, `WATCHDOG_*`, `GREENHUB_SERVE_*`),
/// plus `env`, with
/// `sockets` at descriptors 3, 4, ... (`LISTEN_FDS`, `LISTEN_FDNAMES`, `LISTEN_PID`).
/// `orphan_signal`: the signal the worker gets if the master dies (`None` for a process
/// that outlives it, as a new master does). Returns once the program runs: an exec that
/// fails is an error here, not an exit later.
pub(crate) fn spawn(
    program: &Program,
    env: &[(String, String)],
    sockets: &[(RawFd, &str)],
    orphan_signal: Option<i32>,
) -> Result<u32, SpawnError> {
    let sys = SpawnError::System;
    let n = sockets.len() as RawFd;
    let first_free = 3 + n;
    // Copies of the sockets above the range they go to, so that moving one never overwrites
    // another: the child moves each copy to its place.
    let copies = sockets
        .iter()
        .map(|(fd, _)| dup_above(*fd, first_free))
        .collect::<Result<Vec<OwnedFd>, _>>()
        .map_err(sys)?;
    let (err_read, err_pipe) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| sys(e.into()))?;
    // The parent must hold no write end after the fork, or the read below never ends.
    let err_write = dup_above(err_pipe.as_raw_fd(), first_free).map_err(sys)?;
    drop(err_pipe);

    let skip = |k: &OsStr| {
        let k = k.as_bytes();
        k.starts_with(b"LISTEN_")
            || k == b"NOTIFY_SOCKET"
            || k.starts_with(b"WATCHDOG_")
            || k.starts_with(b"GREENHUB_SERVE_")
    };
    let mut vars: Vec<CString> = Vec::new();
    for (k, v) in std::env::vars_os() {
        if skip(&k) || env.iter().any(|(name, _)| name.as_bytes() == k.as_bytes()) {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        vars.push(cstring(&kv)?);
    }
    for (k, v) in env {
        vars.push(cstring(format!("{k}={v}").as_bytes())?);
    }
    if !sockets.is_empty() {
        vars.push(cstring(format!("LISTEN_FDS={n}").as_bytes())?);
        let names: Vec<&str> = sockets.iter().map(|(_, name)| *name).collect();
        vars.push(cstring(
            format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes(),
        )?);
    }
    // LISTEN_PID=<digits> is written by the child into this buffer.
    const PREFIX: &[u8] = b"LISTEN_PID=";
    let mut pid_var = vec![0u8; PREFIX.len() + 24];
    pid_var[..PREFIX.len()].copy_from_slice(PREFIX);
    let pid_digits = pid_var[PREFIX.len()..].as_mut_ptr();

    let mut envp: Vec<*const libc::c_char> = vars.iter().map(|v| v.as_ptr()).collect();
    if !sockets.is_empty() {
        envp.push(pid_var.as_ptr().cast());
    }
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = program.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let copy_fds: Vec<RawFd> = copies.iter().map(|c| c.as_raw_fd()).collect();
    let err_fd = err_write.as_raw_fd();
    let parent = std::process::id() as libc::pid_t;
    let death = orphan_signal.unwrap_or(0);

    // SAFETY: fork has no preconditions; the child below calls only async-signal-safe
    // functions (dup2, getpid, sigprocmask, signal, prctl, getppid, execve, write, _exit) and
    // touches only memory prepared before the fork, so it is sound even if the master has
    // other threads.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child; see above. Every pointer points into buffers that the fork
        // copied and nothing frees before execve or _exit.
        unsafe {
            child(
                &copy_fds,
                pid_digits,
                death,
                parent,
                program.path.as_ptr(),
                argv.as_ptr(),
                envp.as_ptr(),
                err_fd,
            )
        }
    }
    drop(err_write);
    drop(copies);
    // The child's end closes at its exec (close-on-exec): nothing read means it runs.
    let mut err_file = std::fs::File::from(err_read);
    let mut buf = [0u8; 4];
    let got = loop {
        match std::io::Read::read(&mut err_file, &mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(sys(e)),
        }
    };
    if got == 0 {
        return Ok(pid as u32);
    }
    let errno = i32::from_ne_bytes(buf);
    // The child has exited (it failed to exec): reap it.
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    Err(SpawnError::Exec {
        program: program.shown.clone(),
        source: io::Error::from_raw_os_error(errno),
    })
}

fn dup_above(fd: RawFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (or fails); nothing else is touched.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just made and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The child's side, between fork and exec.
///
/// # Safety
///
/// Called only in a freshly forked child, with pointers into buffers prepared before the
/// fork; it never returns.
#[allow(clippy::too_many_arguments)]
unsafe fn child(
    copies: &[RawFd],
    pid_digits: *mut u8,
    death: i32,
    parent: libc::pid_t,
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    err_fd: RawFd,
) -> ! {
    // SAFETY: async-signal-safe calls only, on descriptors and memory of this child (the
    // caller's contract).
    unsafe {
        let fail = |err_fd: RawFd| -> ! {
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_fd, bytes.as_ptr().cast(), 4);
            libc::_exit(127)
        };
        for (i, fd) in copies.iter().enumerate() {
            // dup2 clears close-on-exec on the new descriptor.
            if libc::dup2(*fd, 3 + i as RawFd) < 0 {
                fail(err_fd);
            }
        }
        // LISTEN_PID's digits, then the end of the string.
        let mut pid = libc::getpid() as u64;
        let mut digits = [0u8; 20];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..len {
            *pid_digits.add(i) = digits[len - 1 - i];
        }
        *pid_digits.add(len) = 0;
        // A fresh signal state: nothing blocked, SIGPIPE back to its default (Rust programs
        // ignore it, and an ignored signal stays ignored across exec).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        if death != 0 {
            libc::prctl(libc::PR_SET_PDEATHSIG, death as libc::c_ulong);
            // The master died before the line above: nobody would supervise this worker.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        libc::execve(path, argv, envp);
        fail(err_fd)
    }
}
