//! `pyfcgi serve --workers N`: a supervisor process that owns the listening socket and runs N
//! worker processes on it (each is `pyfcgi serve` itself, with its own interpreter, given the
//! socket on stdin the FastCGI way). The supervisor never starts Python.
//!
//! - A worker reports that it is ready (the app imported, about to accept) and, once a
//!   second, its counters, as typed messages on its stdout ([`crate::message`]).
//! - A worker that exits is replaced: at once after a clean exit (`--max-requests`), after an
//!   exponential backoff after a crash. Workers that keep failing before they are ready
//!   (`--crash-limit` times in a row) stop the supervisor with the last worker's failure.
//! - SIGTERM/SIGINT: graceful stop (each worker drains, up to `--graceful-timeout`).
//!   SIGQUIT: immediate stop. SIGHUP: rolling restart, one worker at a time: a new one is
//!   started, and an old one is retired only once the new one is ready. The socket stays
//!   open in the supervisor all along, so connections wait in its backlog rather than being
//!   refused.
//! - `--max-rss`, `--worker-lifetime`: a worker over the limit is replaced the same way.
//!   `--max-requests-jitter` spreads the workers' `--max-requests`.
//! - Kept connections survive all of these: each worker shares a socket pair with the
//!   supervisor ([`pyfcgi_server::handoff`]). A retired worker (told so on the pair, not by
//!   SIGTERM, which stays a plain stop) sends each `FCGI_KEEP_CONN` connection back at its
//!   next request boundary, and the supervisor passes it to a ready worker that is staying
//!   (or holds it until one is ready, up to `--graceful-timeout`). A worker that wants to
//!   stop on its own (`--max-requests`) asks to be retired the same way.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use pyfcgi_server::handoff::{Channel, HANDOFF_FD_ENV, Message};

use crate::SupervisorError;
use crate::message::{WORKER_ENV, WorkerMessage};
use crate::watch::RestartWatcher;

/// What the supervisor is asked for.
#[derive(Debug, Clone)]
pub struct Config {
    pub workers: usize,
    pub graceful_timeout: Duration,
    pub max_requests: u64,
    pub max_requests_jitter: u64,
    pub max_rss_mib: u64,
    /// Zero: never.
    pub worker_lifetime: Duration,
    pub crash_limit: u32,
    pub ready_timeout: Duration,
    /// The worker command line after the executable: `serve`, the user's arguments and
    /// `--bind fd:0` (the workers get the socket on stdin).
    pub argv: Vec<OsString>,
    /// `--status-path`: the workers serve the aggregate status (from a file the supervisor
    /// writes).
    pub status_path: bool,
    /// `--status-bind`: the supervisor serves the aggregate status on this address.
    pub status_bind: Option<String>,
    /// `--reload`: folders whose `.py` files trigger a rolling restart.
    pub reload_dirs: Vec<std::path::PathBuf>,
    /// Exit codes that, from a worker of the first generation before it is ready, stop the
    /// supervisor at once with that code (every worker would fail the same way).
    pub fatal_exit_codes: Vec<u8>,
}

/// How the supervisor ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal; the workers finished.
    Stopped,
    /// Workers failed `crash_limit` times in a row before they were ready.
    CrashLoop,
    /// A first worker exited with one of [`Config::fatal_exit_codes`] before it was ready.
    WorkerFailed(u8),
}

enum Event {
    Ready(u64),
    Exited(u64, std::io::Result<ExitStatus>),
    /// `--reload`: a watched file changed.
    Changed(std::path::PathBuf),
    /// A worker's counters (sent once a second).
    Stats(u64, serde_json::Value),
    /// A worker could not start: its diagnosis.
    Failed(u64, String),
    /// A message on a worker's hand-over channel: a kept connection, or a request to retire.
    Handoff(u64, Message),
}

struct Worker {
    pid: u32,
    /// 0..N-1; a replacement takes the slot of the worker it replaces (the per-worker
    /// metrics are labelled by slot, so recycling does not create new series).
    slot: usize,
    started: Instant,
    ready: bool,
    /// Sent SIGTERM on purpose (rolling restart, a limit, shutdown): its exit is expected.
    retiring: bool,
    /// Its last stats line.
    stats: Option<serde_json::Value>,
    /// The supervisor's end of its hand-over pair (`None` if the pair could not be made).
    handoff: Option<Arc<Channel>>,
    /// When it was retired on its pair (not by SIGTERM), until SIGTERM follows.
    told_to_retire: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stopping {
    No,
    Graceful,
    Now,
}

struct Supervisor {
    settings: Config,
    listener: std::os::fd::OwnedFd,
    workers: HashMap<u64, Worker>,
    next_id: u64,
    events: mpsc::UnboundedSender<Event>,
    /// Workers to replace one at a time (rolling restart, limits), oldest first.
    to_replace: VecDeque<u64>,
    /// (new, old): a replacement started and not ready yet.
    replacing: Option<(u64, u64, Instant)>,
    /// Failed exits before readiness, in a row.
    startup_failures: u32,
    /// Crashes of ready workers in the last minute, for the backoff.
    recent_crashes: VecDeque<Instant>,
    /// Workers to start once their backoff has passed, and their slots.
    pending_starts: Vec<(Instant, usize)>,
    stopping: Stopping,
    last_failure: String,
    seed: u64,
    /// Workers started after the first ones (replacements).
    restarts: u64,
    started: Instant,
    /// `--status-path`: where the aggregate status goes for the workers to serve.
    status_file: Option<std::path::PathBuf>,
    /// `--status-bind`: the aggregate status the supervisor's own listener serves.
    status_doc: Option<Arc<Mutex<serde_json::Value>>>,
    /// The counters of workers that have exited, so the totals never go down.
    departed: pyfcgi_status::Totals,
    /// Per slot: restarts and the requests of its exited workers.
    slots: Vec<pyfcgi_status::SlotHistory>,
    /// Some worker has been ready since the supervisor started.
    ever_ready: bool,
    /// The exit code to stop with: a first worker could not load the application (the same
    /// code `serve` without `--workers` exits with).
    fatal: Option<u8>,
    /// The last startup diagnosis logged: workers failing the same way (a crash loop, the
    /// first workers all at once) log it once. Forgotten once a worker is ready.
    last_diagnosis: Option<String>,
    /// Kept connections from retired workers that no worker could take yet, oldest first.
    held: VecDeque<(Message, Instant)>,
    /// Where the next handed-over connection goes first (round robin).
    next_target: usize,
    /// Kept connections retiring workers handed over, and those of them closed because no
    /// worker took them (stopping, or none ready within `--graceful-timeout`).
    handed_over: u64,
    handover_closed: u64,
}

/// Runs the supervisor on `listener` (a listening socket, kept open in the supervisor all
/// along) until it is stopped. `listen` describes it for the log.
pub async fn run(
    config: Config,
    listener: std::os::fd::OwnedFd,
    listen: &str,
) -> Result<Outcome, SupervisorError> {
    info!(
        pid = std::process::id(),
        workers = config.workers,
        listen,
        "pyfcgi {} supervisor starting",
        env!("CARGO_PKG_VERSION")
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
    let status_bind = config.status_bind.clone();
    let reload_dirs = config.reload_dirs.clone();
    let mut sup = Supervisor {
        status_file: config.status_path.then(|| {
            std::env::temp_dir().join(format!("pyfcgi-status-{}.json", std::process::id()))
        }),
        status_doc: config
            .status_bind
            .as_ref()
            .map(|_| Arc::new(Mutex::new(serde_json::Value::Null))),
        settings: config,
        listener,
        workers: HashMap::new(),
        next_id: 1,
        events: tx,
        to_replace: VecDeque::new(),
        replacing: None,
        startup_failures: 0,
        recent_crashes: VecDeque::new(),
        pending_starts: Vec::new(),
        stopping: Stopping::No,
        last_failure: String::new(),
        seed,
        restarts: 0,
        started: Instant::now(),
        departed: pyfcgi_status::Totals::default(),
        slots: Vec::new(),
        ever_ready: false,
        fatal: None,
        last_diagnosis: None,
        held: VecDeque::new(),
        handed_over: 0,
        handover_closed: 0,
        next_target: 0,
    };
    sup.write_status();
    if let (Some(addr), Some(doc)) = (&status_bind, &sup.status_doc) {
        let doc = Arc::clone(doc);
        pyfcgi_status::http::start(
            addr,
            Arc::new(move || doc.lock().unwrap_or_else(PoisonError::into_inner).clone()),
        )?;
    }
    // Watching first: a change made while the first workers start is not missed.
    let _watchers = reload_watchers(&reload_dirs, &sup.events);
    sup.slots = vec![pyfcgi_status::SlotHistory::default(); sup.settings.workers];
    for slot in 0..sup.settings.workers {
        sup.spawn(slot)?;
    }
    sup.restarts = 0;
    for s in &mut sup.slots {
        s.restarts = 0;
    }
    let mut reload_at: Option<Instant> = None;
    let mut ticks: u64 = 0;
    let watch = |kind| {
        signal(kind).map_err(|source| SupervisorError::Io {
            what: "cannot watch signals",
            source,
        })
    };
    let mut term = watch(SignalKind::terminate())?;
    let mut int = watch(SignalKind::interrupt())?;
    let mut hup = watch(SignalKind::hangup())?;
    let mut quit = watch(SignalKind::quit())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stop_deadline: Option<Instant> = None;
    let code = loop {
        tokio::select! {
            _ = term.recv() => sup.stop(Stopping::Graceful, &mut stop_deadline, "SIGTERM"),
            _ = int.recv() => {
                let how = if sup.stopping == Stopping::No { Stopping::Graceful } else { Stopping::Now };
                sup.stop(how, &mut stop_deadline, "SIGINT");
            }
            _ = quit.recv() => sup.stop(Stopping::Now, &mut stop_deadline, "SIGQUIT"),
            _ = hup.recv() => sup.rolling_restart(),
            ev = rx.recv() => match ev {
                Some(Event::Ready(id)) => {
                    sup.ready(id);
                    sup.write_status();
                }
                Some(Event::Exited(id, status)) => {
                    sup.exited(id, &status);
                    sup.write_status();
                    if sup.fatal.is_some() {
                        sup.stop(Stopping::Graceful, &mut stop_deadline, "the application cannot be loaded");
                    }
                }
                Some(Event::Stats(id, v)) => {
                    if let Some(w) = sup.workers.get_mut(&id) {
                        w.stats = Some(v);
                    }
                }
                Some(Event::Failed(id, diagnosis)) => sup.failed(id, diagnosis),
                Some(Event::Handoff(id, message)) => sup.handoff(id, message),
                Some(Event::Changed(path)) => {
                    if reload_at.is_none() {
                        info!(path = %path.display(), "--reload: file changed; rolling restart shortly");
                    }
                    // Debounced: editors write in several steps.
                    reload_at = Some(Instant::now() + Duration::from_millis(300));
                }
                None => {}
            },
            _ = tick.tick() => {
                ticks += 1;
                if ticks.is_multiple_of(4) {
                    sup.write_status();
                }
                if reload_at.is_some_and(|t| Instant::now() >= t) {
                    reload_at = None;
                    sup.rolling_restart();
                }
                sup.tick();
            }
        }
        if sup.stopping != Stopping::No {
            if sup.workers.is_empty() {
                break if let Some(code) = sup.fatal {
                    Outcome::WorkerFailed(code)
                } else if sup.startup_failures >= sup.settings.crash_limit {
                    Outcome::CrashLoop
                } else {
                    Outcome::Stopped
                };
            }
            if stop_deadline.is_some_and(|d| Instant::now() >= d) {
                warn!(
                    left = sup.workers.len(),
                    "workers still running after --graceful-timeout: killing them"
                );
                sup.kill_all(libc::SIGKILL);
                stop_deadline = None;
            }
        } else if let Err(e) = sup.advance() {
            error!("{e}");
            sup.stop(Stopping::Graceful, &mut stop_deadline, "error");
        }
    };
    if let Some(f) = &sup.status_file {
        let _ = std::fs::remove_file(f);
    }
    info!("pyfcgi supervisor stopped");
    Ok(code)
}

impl Supervisor {
    /// Starts one worker in `slot`.
    fn spawn(&mut self, slot: usize) -> Result<u64, SupervisorError> {
        let id = self.next_id;
        self.next_id += 1;
        let exe = std::env::current_exe().map_err(|source| SupervisorError::Io {
            what: "cannot find pyfcgi's own executable",
            source,
        })?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.settings.argv);
        if self.settings.max_requests > 0 && self.settings.max_requests_jitter > 0 {
            // Spread the recycling so the workers do not all restart at once.
            self.seed = self
                .seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let jitter = (self.seed >> 33) % (self.settings.max_requests_jitter + 1);
            cmd.arg("--max-requests")
                .arg((self.settings.max_requests + jitter).to_string());
        }
        let stdin = self
            .listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| SupervisorError::Io {
                what: "cannot duplicate the listening socket for a worker",
                source,
            })?;
        if let Some(f) = &self.status_file {
            cmd.env(pyfcgi_status::STATUS_FILE_ENV, f);
        }
        // The hand-over pair: the worker's end is inherited (close-on-exec cleared in the
        // child only, so no other child gets it), its number in the environment.
        let pair = Channel::pair().and_then(|(ours, theirs)| Ok((Channel::new(ours)?, theirs)));
        let (handoff, worker_end) = match pair {
            Ok((ours, theirs)) => (Some(Arc::new(ours)), Some(theirs)),
            Err(e) => {
                warn!(error = %e, "cannot make the hand-over socket pair: this worker's kept connections will be closed when it retires");
                (None, None)
            }
        };
        let inherit = worker_end.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        if let Some(fd) = inherit {
            cmd.env(HANDOFF_FD_ENV, fd.to_string());
        }
        cmd.stdin(Stdio::from(stdin))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env(WORKER_ENV, id.to_string())
            .kill_on_drop(false);
        // SAFETY: setpgid, prctl and fcntl only change this child's own process attributes (fcntl:
        // close-on-exec of the pair's end, which the parent keeps open until the child has
        // exec'd); all are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = inherit
                    && libc::fcntl(fd, libc::F_SETFD, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Its own process group: a terminal's Ctrl-C reaches the supervisor only,
                // which then stops the workers once, gracefully.
                libc::setpgid(0, 0);
                #[cfg(target_os = "linux")]
                {
                    // A worker must not outlive a supervisor killed with SIGKILL.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| SupervisorError::Io {
            what: "cannot start a worker process",
            source,
        })?;
        drop(worker_end);
        let pid = child.id().unwrap_or_default();
        info!(worker = id, pid, slot, "worker started");
        self.restarts += 1;
        if let Some(s) = self.slots.get_mut(slot) {
            s.restarts += 1;
        }
        self.workers.insert(
            id,
            Worker {
                pid,
                slot,
                started: Instant::now(),
                ready: false,
                retiring: false,
                stats: None,
                handoff: handoff.clone(),
                told_to_retire: None,
            },
        );
        if let Some(channel) = handoff {
            let tx = self.events.clone();
            tokio::spawn(async move {
                forward_handoffs(id, &channel, &tx).await;
            });
        }
        let tx = self.events.clone();
        let stdout = child.stdout.take();
        tokio::spawn(async move {
            watch(id, &mut child, stdout, &tx).await;
        });
        Ok(id)
    }

    /// The aggregate status: written atomically (temp file, rename) for the workers to serve
    /// (`--status-path`), and kept for the supervisor's own listener (`--status-bind`).
    fn write_status(&self) {
        if self.status_file.is_none() && self.status_doc.is_none() {
            return;
        }
        let mut ids: Vec<&u64> = self.workers.keys().collect();
        ids.sort();
        let views: Vec<pyfcgi_status::WorkerView> = ids
            .into_iter()
            .filter_map(|id| {
                let w = self.workers.get(id)?;
                Some(pyfcgi_status::WorkerView {
                    id: *id,
                    slot: w.slot,
                    pid: w.pid,
                    ready: w.ready && !w.retiring,
                    stopping: w.retiring,
                    rss_bytes: pyfcgi_status::process::rss_bytes(w.pid),
                    uptime_s: w.started.elapsed().as_secs_f64(),
                    stats: w.stats.clone(),
                })
            })
            .collect();
        let mut doc = pyfcgi_status::status(
            &views,
            &self.departed,
            &self.slots,
            self.restarts,
            self.started.elapsed().as_secs_f64(),
            true,
        );
        doc["handover"] = serde_json::json!({
            "connections": self.handed_over,
            "closed": self.handover_closed,
            "held": self.held.len(),
        });
        if let Some(path) = &self.status_file {
            let tmp = path.with_extension("json.tmp");
            if std::fs::write(&tmp, doc.to_string()).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
        if let Some(shared) = &self.status_doc {
            *shared.lock().unwrap_or_else(PoisonError::into_inner) = doc;
        }
    }

    fn ready(&mut self, id: u64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.ready = true;
        self.ever_ready = true;
        self.startup_failures = 0;
        self.last_diagnosis = None;
        info!(
            worker = id,
            pid = w.pid,
            after_ms = w.started.elapsed().as_millis(),
            "worker ready"
        );
        if let Some((new, old, _)) = self.replacing
            && new == id
        {
            self.replacing = None;
            self.retire(old, "replaced");
        }
        self.route_held();
    }

    /// A worker's startup diagnosis: logged unless it is the one logged last.
    fn failed(&mut self, id: u64, diagnosis: String) {
        if self.last_diagnosis.as_ref() == Some(&diagnosis) {
            debug!(
                worker = id,
                "the worker failed as the one before (diagnosis above)"
            );
            return;
        }
        error!(worker = id, "{diagnosis}");
        self.last_diagnosis = Some(diagnosis);
    }

    fn retire(&mut self, id: u64, why: &str) {
        if let Some(w) = self.workers.get_mut(&id)
            && !w.retiring
        {
            w.retiring = true;
            info!(
                worker = id,
                pid = w.pid,
                why,
                "retiring worker (graceful stop)"
            );
            // A ready worker is told on its pair, after every connection already sent to it,
            // and hands its kept connections back; SIGTERM would close them.
            let told = w.ready
                && w.handoff
                    .as_ref()
                    .is_some_and(|c| c.try_send(&Message::Retire).is_ok());
            if told {
                w.told_to_retire = Some(Instant::now());
            } else {
                signal_pid(w.pid, libc::SIGTERM);
            }
        }
    }

    /// A message from worker `id`'s hand-over channel.
    fn handoff(&mut self, id: u64, message: Message) {
        match message {
            Message::Connection { .. } => {
                self.handed_over += 1;
                if self.stopping != Stopping::No {
                    // Stopping: nobody will serve it; closed, as without hand-over.
                    self.handover_closed += 1;
                    return;
                }
                if let Err(message) = self.forward(message) {
                    if self.held.is_empty() {
                        info!(
                            from = id,
                            "no worker can take a kept connection now: holding it until one is ready"
                        );
                    }
                    self.held.push_back((message, Instant::now()));
                }
            }
            Message::RetireRequest => {
                let Some(w) = self.workers.get(&id) else {
                    return;
                };
                if w.retiring || self.stopping != Stopping::No {
                    return;
                }
                let slot = w.slot;
                self.to_replace.retain(|&x| x != id);
                let replacement_coming = self.replacing.is_some_and(|(_, old, _)| old == id);
                self.retire(
                    id,
                    "it asked to stop (--max-requests, a stuck request or a changed file)",
                );
                if !replacement_coming {
                    info!(worker = id, "starting a new worker in its place");
                    self.pending_starts.push((Instant::now(), slot));
                }
            }
            Message::Retire => {}
        }
    }

    /// Sends a handed-over connection to a ready worker that is staying, round robin,
    /// preferring those no rolling restart is about to replace; gives it back when none
    /// takes it now.
    fn forward(&mut self, message: Message) -> Result<(), Message> {
        let leaving = |id: &u64| {
            self.to_replace.contains(id) || self.replacing.is_some_and(|(_, old, _)| old == *id)
        };
        let mut staying: Vec<u64> = Vec::new();
        let mut others: Vec<u64> = Vec::new();
        for (id, w) in &self.workers {
            if w.ready && !w.retiring && w.handoff.is_some() {
                if leaving(id) {
                    others.push(*id);
                } else {
                    staying.push(*id);
                }
            }
        }
        staying.sort_unstable();
        others.sort_unstable();
        for group in [staying, others] {
            for i in 0..group.len() {
                let id = group[(self.next_target + i) % group.len()];
                let Some(channel) = self.workers.get(&id).and_then(|w| w.handoff.as_ref()) else {
                    continue;
                };
                match channel.try_send(&message) {
                    Ok(()) => {
                        self.next_target = self.next_target.wrapping_add(i + 1);
                        return Ok(());
                    }
                    // Its queue is full, or it is going away: try the next one.
                    Err(e) => {
                        debug!(worker = id, error = %e, "cannot pass a kept connection to this worker");
                    }
                }
            }
        }
        Err(message)
    }

    /// Passes held connections on, oldest first, as far as workers take them.
    fn route_held(&mut self) {
        while let Some((message, since)) = self.held.pop_front() {
            if let Err(message) = self.forward(message) {
                self.held.push_front((message, since));
                break;
            }
        }
    }

    /// Closes held connections no worker took within `--graceful-timeout`.
    fn expire_held(&mut self) {
        let limit = self.settings.graceful_timeout;
        let before = self.held.len();
        self.held.retain(|(_, since)| since.elapsed() < limit);
        let closed = before - self.held.len();
        self.handover_closed += closed as u64;
        if closed > 0 {
            warn!(
                closed,
                "no worker could take kept connections within --graceful-timeout: closed them"
            );
        }
    }

    fn exited(&mut self, id: u64, status: &std::io::Result<ExitStatus>) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        if let Some(stats) = &w.stats {
            self.departed.add(stats, false);
            if let Some(s) = self.slots.get_mut(w.slot) {
                s.departed(stats);
            }
        }
        let how = match status {
            Ok(s) => describe(*s),
            Err(e) => format!("cannot be waited for: {e}"),
        };
        let clean = status.as_ref().is_ok_and(ExitStatus::success);
        self.to_replace.retain(|&x| x != id);
        if w.retiring || self.stopping != Stopping::No {
            info!(worker = id, pid = w.pid, "worker {how}");
            return;
        }
        if let Some((new, _, _)) = self.replacing
            && new == id
        {
            self.replacing = None;
            self.to_replace.clear();
            error!(
                worker = id,
                "the new worker {how} before it was ready: the rolling restart stopped, the old workers keep serving"
            );
            self.startup_failures += 1;
            self.last_failure = how;
            return;
        }
        if clean {
            // --max-requests, a watched file change: a normal recycle.
            info!(worker = id, pid = w.pid, "worker {how}: starting a new one");
            self.pending_starts.push((Instant::now(), w.slot));
            return;
        }
        let code = status.as_ref().ok().and_then(ExitStatus::code);
        if !w.ready
            && !self.ever_ready
            && let Some(fatal) = code
                .and_then(|c| u8::try_from(c).ok())
                .filter(|c| self.settings.fatal_exit_codes.contains(c))
        {
            // Every worker would fail the same way: say so now rather than after
            // --crash-limit retries, with the code `serve` alone exits with.
            error!(
                worker = id,
                pid = w.pid,
                "the worker {how} before it was ready: the application cannot be loaded (see above); stopping"
            );
            self.fatal = Some(fatal);
            self.last_failure = how;
            return;
        }
        self.last_failure.clone_from(&how);
        if w.ready {
            let now = Instant::now();
            self.recent_crashes.push_back(now);
            while self
                .recent_crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
            {
                self.recent_crashes.pop_front();
            }
        } else {
            self.startup_failures += 1;
        }
        let n = if w.ready {
            u32::try_from(self.recent_crashes.len()).unwrap_or(u32::MAX)
        } else {
            self.startup_failures
        };
        let backoff = backoff(n);
        // Say what is true for the site: other workers may still be serving it.
        let serving = self
            .workers
            .values()
            .filter(|w| w.ready && !w.retiring)
            .count();
        let others = match serving {
            0 => String::new(),
            1 => "; 1 other worker keeps serving".to_owned(),
            n => format!("; {n} other workers keep serving"),
        };
        error!(
            worker = id,
            pid = w.pid,
            backoff_ms = backoff.as_millis(),
            "worker {how}{}{others}: starting a new one",
            if w.ready { "" } else { " before it was ready" }
        );
        self.pending_starts.push((Instant::now() + backoff, w.slot));
    }

    /// Starts due workers, the next replacement, and gives up on a crash loop.
    fn advance(&mut self) -> Result<(), SupervisorError> {
        if self.startup_failures >= self.settings.crash_limit {
            return Err(SupervisorError::CrashLoop {
                failures: self.startup_failures,
                last: self.last_failure.clone(),
            });
        }
        let now = Instant::now();
        let due: Vec<usize> = self
            .pending_starts
            .iter()
            .filter(|(t, _)| *t <= now)
            .map(|(_, slot)| *slot)
            .collect();
        self.pending_starts.retain(|(t, _)| *t > now);
        for slot in due {
            self.spawn(slot)?;
        }
        if let Some((new, old, since)) = self.replacing
            && since.elapsed() > self.settings.ready_timeout
        {
            error!(
                worker = new,
                limit_s = self.settings.ready_timeout.as_secs(),
                "the new worker was not ready in time (--ready-timeout): stopping it; the rolling restart stopped"
            );
            self.replacing = None;
            self.to_replace.clear();
            let _ = old;
            self.retire(new, "not ready in time");
        }
        if self.replacing.is_none()
            && let Some(old) = self.to_replace.pop_front()
            && let Some(slot) = self
                .workers
                .get(&old)
                .filter(|w| !w.retiring)
                .map(|w| w.slot)
        {
            let new = self.spawn(slot)?;
            self.replacing = Some((new, old, Instant::now()));
        }
        Ok(())
    }

    fn rolling_restart(&mut self) {
        if self.stopping != Stopping::No {
            return;
        }
        let mut ids: Vec<(Instant, u64)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring)
            .map(|(id, w)| (w.started, *id))
            .collect();
        ids.sort();
        info!(
            workers = ids.len(),
            "SIGHUP: rolling restart, one worker at a time"
        );
        for (_, id) in ids {
            if !self.to_replace.contains(&id) {
                self.to_replace.push_back(id);
            }
        }
    }

    /// Four times a second: held connections, RSS and lifetime limits.
    fn tick(&mut self) {
        if self.stopping != Stopping::No {
            return;
        }
        self.route_held();
        self.expire_held();
        // A worker told to retire on its pair that is still there well after
        // --graceful-timeout did not get the message: SIGTERM, as without hand-over.
        let late = self.settings.graceful_timeout + Duration::from_secs(5);
        for (id, w) in &mut self.workers {
            if w.told_to_retire.is_some_and(|t| t.elapsed() > late) {
                w.told_to_retire = None;
                warn!(
                    worker = id,
                    pid = w.pid,
                    "a retired worker is still running after --graceful-timeout: sending SIGTERM"
                );
                signal_pid(w.pid, libc::SIGTERM);
            }
        }
        let mut over: Vec<(u64, String)> = Vec::new();
        for (id, w) in &self.workers {
            if w.retiring || !w.ready || self.to_replace.contains(id) {
                continue;
            }
            if self.replacing.is_some_and(|(_, old, _)| old == *id) {
                continue;
            }
            if self.settings.max_rss_mib > 0
                && let Some(rss) = pyfcgi_status::rss_mib(w.pid)
                && rss > self.settings.max_rss_mib
            {
                over.push((
                    *id,
                    format!("RSS {rss} MiB over --max-rss {}", self.settings.max_rss_mib),
                ));
            } else if !self.settings.worker_lifetime.is_zero()
                && w.started.elapsed() > self.settings.worker_lifetime
            {
                over.push((*id, "--worker-lifetime reached".to_owned()));
            }
        }
        for (id, why) in over {
            info!(worker = id, "{why}: replacing the worker");
            self.to_replace.push_back(id);
        }
    }

    fn stop(&mut self, how: Stopping, deadline: &mut Option<Instant>, why: &str) {
        match how {
            Stopping::Graceful if self.stopping == Stopping::No => {
                info!(
                    why,
                    workers = self.workers.len(),
                    "graceful stop: the workers finish their requests"
                );
                self.stopping = Stopping::Graceful;
                self.to_replace.clear();
                self.replacing = None;
                self.drop_held();
                self.kill_all(libc::SIGTERM);
                *deadline =
                    Some(Instant::now() + self.settings.graceful_timeout + Duration::from_secs(2));
            }
            Stopping::Now => {
                info!(why, "immediate stop: killing the workers");
                self.stopping = Stopping::Now;
                self.drop_held();
                self.kill_all(libc::SIGKILL);
            }
            _ => {}
        }
    }

    /// Stopping: held connections are closed, as the workers close theirs.
    fn drop_held(&mut self) {
        if !self.held.is_empty() {
            info!(
                closed = self.held.len(),
                "stopping: closing kept connections no worker had taken yet"
            );
            self.handover_closed += self.held.len() as u64;
            self.held.clear();
        }
    }

    fn kill_all(&mut self, sig: i32) {
        for w in self.workers.values_mut() {
            w.retiring = true;
            signal_pid(w.pid, sig);
        }
    }
}

/// `--reload`: watchers of the app's folders, reporting `.py` changes.
fn reload_watchers(
    dirs: &[std::path::PathBuf],
    events: &mpsc::UnboundedSender<Event>,
) -> Vec<RestartWatcher> {
    let mut watchers = Vec::new();
    for dir in dirs {
        let tx = events.clone();
        match RestartWatcher::on_change(dir, r"\.py$", move |path| {
            let _ = tx.send(Event::Changed(path.to_owned()));
        }) {
            Ok(w) => watchers.push(w),
            Err(e) => warn!("--reload: {e}"),
        }
    }
    watchers
}

/// Forwards what a worker sends on its hand-over channel, until it closes its end.
async fn forward_handoffs(id: u64, channel: &Channel, tx: &mpsc::UnboundedSender<Event>) {
    loop {
        match channel.recv().await {
            Ok(Some(message)) => {
                if tx.send(Event::Handoff(id, message)).is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                warn!(worker = id, error = %e, "ignored a bad hand-over message");
            }
            Err(e) => {
                warn!(worker = id, error = %e, "the hand-over channel failed");
                return;
            }
        }
    }
}

/// Forwards a worker's control lines and reports its exit.
async fn watch(
    id: u64,
    child: &mut Child,
    stdout: Option<tokio::process::ChildStdout>,
    tx: &mpsc::UnboundedSender<Event>,
) {
    if let Some(out) = stdout {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(message) = WorkerMessage::decode(&line) {
                let _ = tx.send(match message {
                    WorkerMessage::Ready => Event::Ready(id),
                    WorkerMessage::Stats { stats } => Event::Stats(id, stats),
                    WorkerMessage::Failed { diagnosis } => Event::Failed(id, diagnosis),
                });
            } else if !line.is_empty() {
                // Something in the worker wrote to its stdout (a C extension, say).
                info!(worker = id, "stdout: {line}");
            }
        }
    }
    let status = child.wait().await;
    let _ = tx.send(Event::Exited(id, status));
}

fn backoff(n: u32) -> Duration {
    let exp = n.saturating_sub(1).min(7);
    Duration::from_millis(100 << exp).min(Duration::from_secs(10))
}

fn signal_pid(pid: u32, sig: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid)
        && pid > 0
    {
        // SAFETY: kill(2) only sends a signal to our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "exited".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100_ms_up_to_10_s() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(
            backoff(50),
            Duration::from_millis(12_800).min(Duration::from_secs(10))
        );
    }

    #[test]
    fn rss_of_this_process_is_known() {
        assert!(pyfcgi_status::rss_mib(std::process::id()).is_some_and(|m| m > 0));
    }
}
