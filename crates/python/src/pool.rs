//! The worker pool: N Python threads, each attached to the interpreter once for its whole
//! life, waiting for the next request with the GIL released. The I/O threads only put
//! requests on the [`JobQueue`] and never touch Python.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::thread::Thread;
use std::time::{Duration, Instant};

use pyfcgi_server::{Request, ResponseWriter};
use pyo3::prelude::*;
use tracing::{debug, error};

use crate::wsgi::{self, WsgiConfig, response::error_page};

/// Jobs queued and not taken yet, over every queue of the process (for the status endpoint).
static QUEUED: AtomicUsize = AtomicUsize::new(0);

/// Requests waiting for a free Python thread in this process.
pub fn queued() -> usize {
    QUEUED.load(Ordering::Relaxed)
}

fn taken<T>(job: Option<T>) -> Option<T> {
    if job.is_some() {
        QUEUED.fetch_sub(1, Ordering::Relaxed);
    }
    job
}

/// A request waiting for a worker.
pub(crate) struct Job {
    pub(crate) request: Request,
    pub(crate) response: ResponseWriter,
}

/// A busy worker is presumed blocked (off the GIL: a database call, a sleep, a slow body)
/// once its request has run this long; only then does a second worker join in.
const JOIN_AFTER: Duration = Duration::from_millis(2);

/// Requests waiting for a worker. Adding one never waits (the connection limit bounds the
/// queue).
///
/// Python runs one thread at a time, so waking a second worker while one is running a quick
/// request only makes them fight over the GIL: a busy worker takes request after request
/// itself, without a wake-up in between. A sleeping worker is woken at once only when none
/// is busy; otherwise one sleeper stands by and joins in when every busy worker has been on
/// its request for [`JOIN_AFTER`] (it is probably waiting on I/O with the GIL released).
pub(crate) struct JobQueue<T = Job> {
    state: Mutex<QueueState<T>>,
}

struct QueueState<T> {
    jobs: VecDeque<T>,
    /// When each worker started its current request (`None`: not running one).
    started: Vec<Option<Instant>>,
    /// Sleeping workers, the most recent last: the one woken next, whose caches are warm and
    /// which the scheduler does not let preempt the I/O thread the way a long sleeper would.
    idle: Vec<(usize, Thread)>,
    /// A sleeper is watching the busy workers on a timer (not in `idle`).
    standby: bool,
    standby_thread: Option<(usize, Thread)>,
    /// A sleeper was woken to become the standby.
    standby_called: bool,
    closed: bool,
}

impl<T> QueueState<T> {
    fn busy(&self) -> usize {
        self.started.iter().filter(|s| s.is_some()).count()
    }

    /// When worker `me` may join: every other busy worker past [`JOIN_AFTER`] (`None`: now).
    fn join_at(&self, me: usize) -> Option<Instant> {
        self.started
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .filter_map(|(_, s)| *s)
            .max()
            .map(|t| t + JOIN_AFTER)
    }
}

impl<T> JobQueue<T> {
    pub(crate) fn new(workers: usize) -> Self {
        Self {
            state: Mutex::new(QueueState {
                jobs: VecDeque::new(),
                started: vec![None; workers.max(1)],
                idle: Vec::new(),
                standby: false,
                standby_thread: None,
                standby_called: false,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a job; hands it back when the pool has stopped.
    #[allow(clippy::result_large_err)] // moved straight back to the caller, never stored
    pub(crate) fn push(&self, job: T) -> Result<(), T> {
        let mut st = self.lock();
        if st.closed {
            return Err(job);
        }
        st.jobs.push_back(job);
        QUEUED.fetch_add(1, Ordering::Relaxed);
        // Wake a sleeper when nobody is running, or to become the standby.
        let wake = (!st.idle.is_empty() || st.standby)
            && (st.busy() == 0 || (!st.standby && !st.standby_called));
        if wake && st.busy() > 0 {
            st.standby_called = true;
        }
        let woken = if !wake {
            None
        } else if st.busy() == 0 {
            // The most recent sleeper: warm, and it does not preempt the I/O thread the way
            // a long sleeper would. Counted busy from now, so the rest of a burst of requests
            // does not wake the others.
            let next = st.idle.pop().or_else(|| st.standby_thread.clone());
            if let Some((i, _)) = &next {
                st.started[*i] = Some(Instant::now());
            }
            next.map(|(_, t)| t)
        } else {
            // The standby is the least recently used worker.
            Some(st.idle.remove(0).1)
        };
        drop(st);
        if let Some(t) = woken {
            t.unpark();
        }
        Ok(())
    }

    /// Worker `me` finished its request: the next job if one is queued.
    fn try_next(&self, me: usize) -> Option<T> {
        let mut st = self.lock();
        let job = taken(st.jobs.pop_front());
        st.started[me] = job.as_ref().map(|_| Instant::now());
        job
    }

    /// The next job for worker `me`, waiting for one; `None` once closed and empty.
    fn next(&self, me: usize) -> Option<T> {
        let mut st = self.lock();
        st.started[me] = None;
        let mut standing_by = false;
        loop {
            if st.jobs.is_empty() {
                if st.closed {
                    return None;
                }
                if standing_by && st.busy() == 0 {
                    // Nobody to watch: sleep like the others. (While a worker is busy the
                    // standby stays, so a queue that keeps emptying and refilling does not
                    // wake a new standby each time.)
                    st.standby = false;
                    st.standby_thread = None;
                    standing_by = false;
                }
            } else {
                let may_take = st.join_at(me).is_none_or(|at| Instant::now() >= at);
                if may_take {
                    if standing_by {
                        st.standby = false;
                        st.standby_thread = None;
                    }
                    st.started[me] = Some(Instant::now());
                    let job = taken(st.jobs.pop_front());
                    // Someone must watch what is still queued.
                    let call = !st.jobs.is_empty()
                        && !st.idle.is_empty()
                        && !st.standby
                        && !st.standby_called;
                    if call {
                        st.standby_called = true;
                        let (_, t) = st.idle.remove(0);
                        t.unpark();
                    }
                    return job;
                }
                if !standing_by && !st.standby {
                    st.standby = true;
                    st.standby_thread = Some((me, std::thread::current()));
                    standing_by = true;
                }
            }
            // Not busy while asleep (a waker may have counted this worker busy for a job
            // another worker took meanwhile).
            st.started[me] = None;
            let timeout = st
                .join_at(me)
                .filter(|_| standing_by)
                .map(|at| at.saturating_duration_since(Instant::now()));
            if !standing_by {
                st.idle.push((me, std::thread::current()));
            }
            drop(st);
            match timeout {
                Some(t) => std::thread::park_timeout(t),
                None => std::thread::park(),
            }
            st = self.lock();
            // Still listed: woken by the timer (or spuriously), not by a waker.
            st.idle.retain(|(i, _)| *i != me);
            st.standby_called = false;
        }
    }

    /// No more jobs: workers finish what is queued, then exit.
    pub(crate) fn close(&self) {
        let (idle, standby) = {
            let mut st = self.lock();
            st.closed = true;
            (
                std::mem::take(&mut st.idle),
                st.standby_thread.take().map(|(_, t)| t),
            )
        };
        for t in idle.into_iter().map(|(_, t)| t).chain(standby) {
            t.unpark();
        }
    }
}

/// What the workers run.
pub enum AppState {
    /// The WSGI callable.
    Loaded(Py<PyAny>),
    /// Import failed: every request gets a 500 saying so; `detail` is the diagnosis.
    Failed {
        /// The full diagnosis (traceback, interpreter facts).
        detail: String,
    },
}

/// The running pool; dropping it (after the handler) lets the threads finish.
pub struct WorkerPool {
    threads: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    /// Starts `n` workers taking jobs from `rx`.
    pub(crate) fn start(
        n: usize,
        rx: &Arc<JobQueue<Job>>,
        app: &Arc<AppState>,
        cfg: &Arc<WsgiConfig>,
    ) -> std::io::Result<Self> {
        let mut threads = Vec::with_capacity(n);
        let dog = match cfg.request_timeout {
            Some(t) if !t.is_zero() => Some(crate::watchdog::Watchdog::start(
                t,
                cfg.exit_when_stuck,
                cfg.shutdown.clone(),
            )?),
            _ => None,
        };
        for i in 0..n.max(1) {
            let (rx, app, cfg) = (Arc::clone(rx), Arc::clone(app), Arc::clone(cfg));
            let dog = dog.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("pyfcgi-py-{i}"))
                    .spawn(move || {
                        pyfcgi_server::sched::app_thread();
                        worker(i, &rx, &app, &cfg, dog.as_ref());
                    })?,
            );
        }
        Ok(Self { threads })
    }

    /// Waits for every worker to finish its current request and exit (call after the server
    /// stopped, so the job queue is closed).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                error!("a Python worker thread panicked");
            }
        }
    }
}

/// What a request runs: the app, or the load failure.
enum Resolved {
    App(Py<PyAny>),
    Failed(String),
}

/// The app for this request.
fn resolve(py: Python<'_>, app: &AppState) -> Resolved {
    match app {
        AppState::Loaded(app) => Resolved::App(app.clone_ref(py)),
        AppState::Failed { detail } => Resolved::Failed(detail.clone()),
    }
}

/// Takes on the identity of the request's pipe client for the calling thread.
fn impersonate(request: &Request) -> Result<pyfcgi_server::impersonate::Impersonation, String> {
    let client = request.client.as_ref().ok_or(
        "the request did not come over IIS's named pipe, so there is no signed-in user to run as",
    )?;
    let guard = client.impersonate().map_err(|e| e.to_string())?;
    debug!(
        request = %request.request_id(),
        user = pyfcgi_server::impersonate::PipeClient::thread_user().as_deref().unwrap_or("?"),
        "running the request as the pipe client"
    );
    Ok(guard)
}

fn worker(
    me: usize,
    rx: &JobQueue<Job>,
    app: &AppState,
    cfg: &WsgiConfig,
    dog: Option<&crate::watchdog::Watchdog>,
) {
    Python::attach(|py| {
        // This thread's id as Python knows it (the key of sys._current_frames()).
        let ident: u64 = py
            .import("threading")
            .and_then(|t| t.call_method0("get_ident"))
            .and_then(|i| i.extract())
            .unwrap_or_default();
        loop {
            // Wait without the GIL so other workers (and Python threads) run meanwhile.
            // A queued job is taken with the GIL kept; waiting happens without it.
            let job = rx.try_next(me).or_else(|| py.detach(|| rx.next(me)));
            let Some(Job {
                request,
                mut response,
            }) = job
            else {
                break;
            };
            let _watched = dog.map(|d| {
                let what = format!(
                    "{} {}",
                    request.params.get_str("REQUEST_METHOD").unwrap_or("GET"),
                    request
                        .params
                        .get_str("REQUEST_URI")
                        .or_else(|| request.params.get_str("PATH_INFO"))
                        .unwrap_or("/")
                );
                d.watch(request.request_id(), ident, response.takeover(), what)
            });
            // --impersonate: this thread runs as IIS's user until the request is done (the
            // guard reverts it, on errors and timeouts too); never as the pool's identity.
            let _impersonation = if cfg.impersonate {
                match impersonate(&request) {
                    Ok(guard) => Some(guard),
                    Err(why) => {
                        error!(request = %request.request_id(), "--impersonate: {why}; the request is refused rather than run as the pool's identity");
                        let page = error_page(
                            "500 Internal Server Error",
                            "Internal Server Error: the request could not run as the signed-in user. The server log has the details.",
                            request.request_id(),
                            None,
                        );
                        drop(request);
                        let mut response = response;
                        let _ = py.detach(move || {
                            response.blocking_write(page)?;
                            response.blocking_end(0)
                        });
                        continue;
                    }
                }
            } else {
                None
            };
            match resolve(py, app) {
                Resolved::App(app) => {
                    // A bug in pyfcgi must cost one request, not the worker thread: the
                    // response writer's Drop still ends the request for the web server.
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        wsgi::run_request(py, &app, request, response, cfg);
                    }));
                    if ran.is_err() {
                        error!(
                            "internal error while running a request (a pyfcgi bug; please report it); the worker continues"
                        );
                    }
                }
                Resolved::Failed(detail) => {
                    let page = error_page(
                        "500 Internal Server Error",
                        "Internal Server Error: the application failed to load. The server log has the details.",
                        request.request_id(),
                        cfg.detailed_errors.then_some(detail.as_str()),
                    );
                    drop(request);
                    let mut response = response;
                    let _ = py.detach(move || {
                        response.blocking_write(page)?;
                        response.blocking_end(0)
                    });
                }
            }
        }
    });
    debug!("Python worker exiting");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_worker_takes_queued_jobs_and_sleepers_join_only_when_it_is_stuck() {
        let q = Arc::new(JobQueue::<u32>::new(2));
        // Worker 0 takes job 1 and is "busy" with it.
        q.push(1).unwrap();
        assert_eq!(q.try_next(0), Some(1));
        let sleeper = {
            let q = Arc::clone(&q);
            // Timed from before the spawn: a thread that starts late must not look early.
            let t = Instant::now();
            std::thread::spawn(move || {
                let job = q.next(1);
                (job, t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        // Worker 0 has been on job 1 for 20 ms (> JOIN_AFTER): the standby takes job 2.
        q.push(2).unwrap();
        let (job, waited) = sleeper.join().unwrap();
        assert_eq!(job, Some(2));
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        // A worker that keeps finishing quickly takes the next job itself.
        q.push(3).unwrap();
        assert_eq!(q.try_next(0), Some(3));
        q.close();
        assert_eq!(q.next(0), None);
    }

    #[test]
    fn a_second_job_waits_for_the_standby_timer_while_the_first_runs() {
        let q = Arc::new(JobQueue::<u32>::new(2));
        q.push(1).unwrap();
        assert_eq!(q.try_next(0), Some(1));
        let sleeper = {
            let q = Arc::clone(&q);
            std::thread::spawn(move || q.next(1))
        };
        std::thread::sleep(Duration::from_millis(5));
        let pushed = Instant::now();
        q.push(2).unwrap();
        // Worker 0 stays on job 1 (blocked): the standby joins within about JOIN_AFTER.
        assert_eq!(sleeper.join().unwrap(), Some(2));
        assert!(pushed.elapsed() < Duration::from_secs(1));
    }
}
