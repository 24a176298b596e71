//! Spawning `test-pd` and `tikv-server` from the binaries cargo built, each
//! with its log in a temporary directory, killed (SIGKILL) when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a process may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The directory holding the workspace binaries: `$TIKV_LAB_BIN_DIR`, else
/// the directory of the running executable (a test binary's `deps/` is left
/// for its parent).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TIKV_LAB_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of workspace binary `name`, or an error saying how to build it.
pub fn bin(name: &str) -> Result<PathBuf, String> {
    let p = bin_dir().join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!(
            "{} not found: build the binaries first (`cargo build --workspace`; `make test` does)",
            p.display()
        ))
    }
}

/// A running child process with the JSON line it printed when ready.
pub struct LabProcess {
    /// A name for messages (`test-pd`, `store 1001`).
    pub name: String,
    /// The ready line.
    pub ready: Value,
    /// Its stderr (and, for stores, log) file.
    pub stderr_path: PathBuf,
    child: Option<Child>,
}

impl LabProcess {
    /// Spawns `cmd` (stdout piped, stderr to `stderr_path`) and waits for
    /// its first stdout line, which must be JSON.
    pub fn spawn(name: &str, mut cmd: Command, stderr_path: &Path) -> Result<LabProcess, String> {
        let err_file = std::fs::File::create(stderr_path)
            .map_err(|e| format!("{}: {}", stderr_path.display(), e))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file)
            .spawn()
            .map_err(|e| format!("spawn {}: {}", name, e))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut p = LabProcess {
            name: name.to_owned(),
            ready: Value::Null,
            stderr_path: stderr_path.to_owned(),
            child: Some(child),
        };
        match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some(Ok(line))) => {
                p.ready = serde_json::from_str(&line)
                    .map_err(|e| format!("{} printed {:?}, not JSON: {}", name, line, e))?;
                Ok(p)
            }
            Ok(_) => {
                let status = p.wait_exit(Duration::from_secs(5));
                Err(format!(
                    "{} exited before it was ready ({:?}): {}",
                    name,
                    status,
                    std::fs::read_to_string(stderr_path)
                        .unwrap_or_default()
                        .trim()
                ))
            }
            Err(_) => Err(format!(
                "{} was not ready within {:?}: {}",
                name,
                READY_TIMEOUT,
                std::fs::read_to_string(stderr_path)
                    .unwrap_or_default()
                    .trim()
            )),
        }
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A string field of the ready line.
    pub fn field(&self, key: &str) -> String {
        match &self.ready[key] {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            v => v.to_string(),
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM (SIGINT when `int`).
    pub fn signal(&self, int: bool) -> Result<(), String> {
        let pid = self
            .pid()
            .ok_or_else(|| format!("{} is not running", self.name))?;
        let sig = if int { "-INT" } else { "-TERM" };
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .map_err(|e| format!("kill {} {}: {}", sig, pid, e))?;
        if st.success() {
            Ok(())
        } else {
            Err(format!("kill {} {} failed: {}", sig, pid, st))
        }
    }

    /// Waits up to `timeout` for the process to exit; `None` if it did not
    /// (it is then killed).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_or_kill(&mut self.child.take()?, timeout)
    }
}

/// Polls `child` until it exits (its status) or `timeout` passes (it is
/// then killed and reaped: `None`).
fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a process that ran to its end left.
#[derive(Debug)]
pub struct Finished {
    /// Its exit code (`None` when killed by a signal or the timeout).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `cmd` to its end, killing it after `timeout`.
pub fn run_to_exit(mut cmd: Command, timeout: Duration) -> Result<Finished, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(&err).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("spawn {:?}: {}", cmd, e))?;
    let code = wait_or_kill(&mut child, timeout).and_then(|st| st.code());
    Ok(Finished {
        code,
        stdout: std::fs::read_to_string(&out).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    })
}
