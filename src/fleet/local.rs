//! The local backend: each instance is a child process in its own process
//! group, started in the model's folder with `PORT` set to a free port.
//!
//! Every child also gets `MODELFLEET_INSTANCE_ID` and `MODELFLEET_SCOPE` (a
//! digest of the database it is recorded in) in its environment. That is how
//! a restarted server finds processes left by an earlier run over the same
//! database (`/proc/*/environ`) and ends the ones nothing tracks, without
//! touching those of other servers on the machine.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use uuid::Uuid;

use super::backend::{Backend, EventKind, EventLog, Placed, StartError, Started, scope_tag};
use super::cog::{CogClient, Health};
use crate::models::{LocalSpec, ModelSpec, SetupSpec};

/// Output lines kept as events per instance; later lines are dropped.
pub const MAX_OUTPUT_EVENTS: usize = 500;
/// How long a stopped instance gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The longest a model's setup step may run.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The file in a model's folder that records the last successful setup.
const SETUP_STAMP: &str = ".modelfleet-setup";
/// Held while a setup runs, by any server on the machine.
const SETUP_LOCK: &str = ".modelfleet-setup.lock";

pub struct LocalBackend {
    scope: String,
    events: Arc<EventLog>,
    cog: CogClient,
    /// Process group of each running child.
    children: Mutex<HashMap<Uuid, Child>>,
    /// One setup at a time per model.
    setups: tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

struct Child {
    pgid: i32,
    exited: watch::Receiver<Option<String>>,
}

impl LocalBackend {
    /// `scope` names the database this server records instances in.
    pub fn new(scope: &str, events: Arc<EventLog>) -> Self {
        Self {
            scope: scope_tag(scope),
            events,
            cog: CogClient::new(),
            children: Mutex::new(HashMap::new()),
            setups: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Runs the model's setup step unless its stamp shows it already ran
    /// with the same command and inputs.
    async fn ensure_setup(&self, model: &ModelSpec, local: &LocalSpec) -> Result<(), String> {
        let Some(setup) = &local.setup else {
            return Ok(());
        };
        let lock = {
            let mut setups = self.setups.lock().await;
            setups.entry(model.id.clone()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        // Other servers on this machine may share the folder: lock the file
        // too, for as long as the setup runs.
        let lock_path = local.workdir.join(SETUP_LOCK);
        let _file_lock = tokio::task::spawn_blocking(move || {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| format!("cannot lock {}: {e}", lock_path.display()))
        })
        .await
        .map_err(|e| format!("setup lock: {e}"))??;
        let digest = setup_digest(&local.workdir, setup)?;
        let stamp = local.workdir.join(SETUP_STAMP);
        if tokio::fs::read_to_string(&stamp).await.ok().as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        // No stamp while the setup runs: one that fails or is cut short
        // (the server killed) must run again next time, not count as done.
        match tokio::fs::remove_file(&stamp).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", stamp.display())),
        }
        tracing::info!(model_id = %model.id, workdir = %local.workdir.display(), "model setup started");
        let started = Instant::now();
        let mut child = Command::new(&setup.command[0])
            .args(&setup.command[1..])
            .current_dir(&local.workdir)
            .envs(&local.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot run the setup command {:?}: {e}", setup.command[0]))?;
        let tail = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut readers = Vec::new();
        for (stream, pipe) in [
            (
                "stdout",
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            ),
            (
                "stderr",
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let model_id = model.id.clone();
            let tail = tail.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::info!(model_id = %model_id, stream, line = %line, "model setup output");
                    if let Ok(mut tail) = tail.lock() {
                        tail.push(line);
                        let excess = tail.len().saturating_sub(20);
                        tail.drain(..excess);
                    }
                }
            }));
        }
        let status = match tokio::time::timeout(SETUP_TIMEOUT, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => return Err(format!("setup did not run: {e}")),
            Err(_) => {
                return Err(format!(
                    "setup took longer than {} s",
                    SETUP_TIMEOUT.as_secs()
                ));
            }
        };
        for reader in readers {
            let _ = reader.await;
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        if !status.success() {
            let tail = tail.lock().map(|t| t.join("\n")).unwrap_or_default();
            tracing::warn!(model_id = %model.id, duration_ms, status = %status, "model setup failed");
            return Err(format!("setup failed ({status}): {tail}"));
        }
        // Written whole or not at all: a reader never sees half a digest.
        let partial = local.workdir.join(format!("{SETUP_STAMP}.partial"));
        tokio::fs::write(&partial, &digest)
            .await
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        tokio::fs::rename(&partial, &stamp)
            .await
            .map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
        tracing::info!(model_id = %model.id, duration_ms, "model setup finished");
        Ok(())
    }

    async fn wait_ready(
        &self,
        endpoint: &str,
        timeout: Duration,
        exited: &mut watch::Receiver<Option<String>>,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(detail) = exited.borrow().clone() {
                return Err(format!("the process ended before it was ready: {detail}"));
            }
            match self.cog.health(endpoint).await {
                Ok(Health::Ready | Health::Busy) => return Ok(()),
                Ok(Health::SetupFailed(logs)) => {
                    let tail: Vec<&str> = logs.lines().rev().take(5).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    return Err(format!("the model's setup failed: {}", tail.join(" / ")));
                }
                Ok(Health::Starting | Health::Other(_)) | Err(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!("not ready within {} s", timeout.as_secs()));
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = exited.changed() => {}
            }
        }
    }

    fn signal(&self, instance_id: Uuid, signal: Signal) -> Option<watch::Receiver<Option<String>>> {
        let children = self.children.lock().ok()?;
        let child = children.get(&instance_id)?;
        let _ = killpg(Pid::from_raw(child.pgid), signal);
        Some(child.exited.clone())
    }
}

/// A backend that goes away (the server stopping without its orderly
/// shutdown, a test ending) takes its processes with it rather than leave
/// them running untracked.
impl Drop for LocalBackend {
    fn drop(&mut self) {
        if let Ok(children) = self.children.lock() {
            for child in children.values() {
                let _ = killpg(Pid::from_raw(child.pgid), Signal::SIGKILL);
            }
        }
    }
}

/// What decides whether setup must run again: the command and the contents
/// of its input files.
fn setup_digest(workdir: &Path, setup: &SetupSpec) -> Result<String, String> {
    let mut hash = Sha256::new();
    for part in &setup.command {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    for input in &setup.inputs {
        let path = workdir.join(input);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("setup input {}: {e}", path.display()))?;
        hash.update(input.to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(&bytes);
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn free_port() -> Result<u16, String> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("no free port: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn start(
        &self,
        model: &ModelSpec,
        instance_id: Uuid,
        mut placed: Placed,
    ) -> Result<Started, StartError> {
        // A process runs here as soon as it starts: its setup is starting.
        placed.now();
        let local = model
            .local
            .as_ref()
            .ok_or_else(|| "the model has no settings for the local backend".to_owned())?;
        self.ensure_setup(model, local).await?;
        let port = free_port()?;
        let mut child = Command::new(&local.command[0])
            .args(&local.command[1..])
            .current_dir(&local.workdir)
            .envs(&local.env)
            .env("PORT", port.to_string())
            .env("MODELFLEET_INSTANCE_ID", instance_id.to_string())
            .env("MODELFLEET_SCOPE", &self.scope)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot start {:?} in {}: {e}",
                    local.command[0],
                    local.workdir.display()
                )
            })?;
        let pid = child.id().map_or(0, |p| p as i32);
        self.events
            .record(
                instance_id,
                EventKind::Normal,
                "ProcessStarted",
                &format!("pid {pid}, port {port}"),
            )
            .await;

        // Output lines become events, up to a bound.
        let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for (reason, pipe) in [
            (
                "Stdout",
                child
                    .stdout
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            ),
            (
                "Stderr",
                child
                    .stderr
                    .take()
                    .map(|s| Box::new(s) as Box<dyn AsyncRead + Send + Unpin>),
            ),
        ] {
            let Some(pipe) = pipe else { continue };
            let events = self.events.clone();
            let written = written.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let n = written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if n < MAX_OUTPUT_EVENTS {
                        events
                            .record(instance_id, EventKind::Normal, reason, &line)
                            .await;
                    } else if n == MAX_OUTPUT_EVENTS {
                        let note =
                            format!("further output dropped after {MAX_OUTPUT_EVENTS} lines");
                        events
                            .record(instance_id, EventKind::Warning, "OutputTruncated", &note)
                            .await;
                    }
                }
            });
        }

        // Watch for the end of the process.
        let (exit_tx, mut exited) = watch::channel(None);
        let events = self.events.clone();
        tokio::spawn(async move {
            let detail = match child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("lost track of the process: {e}"),
            };
            // Said first: a job waiting on this instance must learn of the
            // death at once, not after a database write.
            let _ = exit_tx.send(Some(detail.clone()));
            events
                .record(instance_id, EventKind::Normal, "ProcessExited", &detail)
                .await;
        });
        if let Ok(mut children) = self.children.lock() {
            children.insert(
                instance_id,
                Child {
                    pgid: pid,
                    exited: exited.clone(),
                },
            );
        }

        let endpoint = format!("http://127.0.0.1:{port}");
        let timeout = Duration::from_secs(local.start_timeout_secs);
        if let Err(reason) = self.wait_ready(&endpoint, timeout, &mut exited).await {
            self.stop(instance_id).await;
            return Err(reason.into());
        }
        Ok(Started {
            endpoint,
            handle: pid.to_string(),
            node: None,
            detail: serde_json::json!({ "pid": pid.to_string() }),
            exited,
        })
    }

    async fn stop(&self, instance_id: Uuid) {
        let Some(mut exited) = self.signal(instance_id, Signal::SIGTERM) else {
            return;
        };
        let ignored = tokio::time::timeout(STOP_GRACE, exited.wait_for(Option::is_some))
            .await
            .is_err();
        if ignored {
            tracing::warn!(instance_id = %instance_id, grace_secs = STOP_GRACE.as_secs(), "instance ignored SIGTERM; killing it");
            self.signal(instance_id, Signal::SIGKILL);
            let _ended = tokio::time::timeout(STOP_GRACE, exited.wait_for(Option::is_some))
                .await
                .is_ok();
        }
        // The group may hold children that outlived the leader.
        self.signal(instance_id, Signal::SIGKILL);
        if let Ok(mut children) = self.children.lock() {
            children.remove(&instance_id);
        }
    }

    fn owned(&self) -> Vec<Uuid> {
        self.children
            .lock()
            .map(|c| c.keys().copied().collect())
            .unwrap_or_default()
    }

    async fn end_untracked(&self, tracked: &HashSet<Uuid>) -> usize {
        let mut ended = 0;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
                continue;
            };
            let var = |name: &[u8]| {
                environ
                    .split(|b| *b == 0)
                    .find_map(|v| v.strip_prefix(name))
                    .and_then(|v| std::str::from_utf8(v).ok())
            };
            if var(b"MODELFLEET_SCOPE=") != Some(self.scope.as_str()) {
                continue;
            }
            let Some(instance) =
                var(b"MODELFLEET_INSTANCE_ID=").and_then(|id| Uuid::parse_str(id).ok())
            else {
                continue;
            };
            if tracked.contains(&instance) {
                continue;
            }
            let target = Pid::from_raw(pid);
            if nix::sys::signal::kill(target, Signal::SIGKILL).is_ok() {
                tracing::info!(pid, instance_id = %instance, "ended a process left by an earlier run");
                ended += 1;
            }
        }
        ended
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => {
            let name = Signal::try_from(signal)
                .map_or_else(|_| signal.to_string(), |s| s.as_str().to_owned());
            format!("killed by signal {name}")
        }
        (None, None) => "ended".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_setup_runs_without_a_stamp_and_stamps_only_on_success() {
        use crate::models::{ModelSpec, Protocol};
        let db = sea_orm::Database::connect("sqlite::memory:")
            .await
            .expect("db");
        let backend = LocalBackend::new(
            "test",
            EventLog::new(db, Arc::new(super::super::board::InstanceBoard::default())),
        );
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("requirements.txt"), "a\n").expect("write");
        // The setup fails while a stamp (of an earlier setup) is present,
        // and while `ok` is missing.
        let script = "test ! -e .modelfleet-setup && test -e ok";
        let local = LocalSpec {
            command: vec!["true".to_owned()],
            workdir: dir.path().to_owned(),
            env: std::collections::BTreeMap::new(),
            start_timeout_secs: 5,
            setup: Some(SetupSpec {
                command: vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
                inputs: vec!["requirements.txt".into()],
            }),
        };
        let model = ModelSpec {
            id: "m".to_owned(),
            name: "m".to_owned(),
            description: String::new(),
            protocol: Protocol::Cog,
            enabled: true,
            min_instances: 0,
            max_instances: 1,
            idle_timeout_ms: 1000,
            request_timeout_ms: 1000,
            max_input_bytes: 100,
            local: Some(local.clone()),
            kubernetes: None,
        };
        let stamp = dir.path().join(SETUP_STAMP);
        std::fs::write(&stamp, "an earlier setup").expect("write");
        // Failed: the old stamp is gone and no new one is written.
        assert!(backend.ensure_setup(&model, &local).await.is_err());
        assert!(!stamp.exists());
        std::fs::write(dir.path().join("ok"), "").expect("write");
        backend.ensure_setup(&model, &local).await.expect("set up");
        let digest = std::fs::read_to_string(&stamp).expect("stamped");
        assert_eq!(
            digest,
            setup_digest(dir.path(), local.setup.as_ref().expect("setup")).expect("digest")
        );
        // Done: not run again (it would fail now, with the stamp present).
        backend.ensure_setup(&model, &local).await.expect("skipped");
    }

    #[test]
    fn setup_runs_again_only_when_its_inputs_change() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("requirements.txt"), "cog==1\n").expect("write");
        let setup = SetupSpec {
            command: vec!["make".to_owned(), "venv".to_owned()],
            inputs: vec!["requirements.txt".into()],
        };
        let first = setup_digest(dir.path(), &setup).expect("digest");
        assert_eq!(first, setup_digest(dir.path(), &setup).expect("digest"));
        std::fs::write(dir.path().join("requirements.txt"), "cog==2\n").expect("write");
        let changed_input = setup_digest(dir.path(), &setup).expect("digest");
        assert_ne!(first, changed_input);
        let other_command = SetupSpec {
            command: vec!["make".to_owned(), "other".to_owned()],
            ..setup.clone()
        };
        assert_ne!(
            changed_input,
            setup_digest(dir.path(), &other_command).expect("digest")
        );
        // A missing input is an error that names it, not a silent skip.
        let missing = SetupSpec {
            inputs: vec!["absent.txt".into()],
            ..setup
        };
        assert!(
            setup_digest(dir.path(), &missing)
                .expect_err("missing")
                .contains("absent.txt")
        );
    }
}
