//! `--request-timeout`: a request that runs longer is answered 504 if its response has not
//! started (else the response is ended where it is), and the app's Python stack at that
//! moment is logged. A request still running at twice the timeout means a stuck worker: the
//! process then stops gracefully so that whoever runs it (the supervisor, IIS) replaces it,
//! when it is told to (`exit_when_stuck`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyfcgi_server::Takeover;
use pyfcgi_server::observe::RequestId;
use pyo3::prelude::*;
use tokio_util::sync::CancellationToken;
use tracing::error;

struct Entry {
    thread: u64,
    started: Instant,
    takeover: Option<Takeover>,
    what: String,
    answered: bool,
}

/// The requests running on the worker threads.
#[derive(Clone)]
pub(crate) struct Watchdog {
    running: Arc<Mutex<HashMap<RequestId, Entry>>>,
}

/// Removes its request from the watchdog when dropped.
pub(crate) struct Watched {
    dog: Watchdog,
    id: RequestId,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.dog
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Watchdog {
    /// Starts the watchdog thread.
    pub(crate) fn start(
        timeout: Duration,
        exit_when_stuck: bool,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let dog = Self {
            running: Arc::new(Mutex::new(HashMap::new())),
        };
        let running = Arc::clone(&dog.running);
        std::thread::Builder::new()
            .name("pyfcgi-watchdog".into())
            .spawn(move || watch(&running, timeout, exit_when_stuck, &shutdown))?;
        Ok(dog)
    }

    /// Watches request `id`, running on the Python thread `thread` (`threading.get_ident()`).
    pub(crate) fn watch(
        &self,
        id: RequestId,
        thread: u64,
        takeover: Option<Takeover>,
        what: String,
    ) -> Watched {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                id,
                Entry {
                    thread,
                    started: Instant::now(),
                    takeover,
                    what,
                    answered: false,
                },
            );
        Watched {
            dog: self.clone(),
            id,
        }
    }
}

fn watch(
    running: &Mutex<HashMap<RequestId, Entry>>,
    timeout: Duration,
    exit_when_stuck: bool,
    shutdown: &CancellationToken,
) {
    let tick = (timeout / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
    let mut stuck_reported = false;
    while !shutdown.is_cancelled()
        || !running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    {
        std::thread::sleep(tick);
        let mut late: Vec<(RequestId, u64, String, Duration, bool)> = Vec::new();
        let mut stuck = false;
        {
            let mut map = running.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, e) in map.iter_mut() {
                let elapsed = e.started.elapsed();
                if elapsed >= timeout && !e.answered {
                    e.answered = true;
                    let page = format!(
                        "The application did not answer within {} s (request id {id}).\n",
                        timeout.as_secs_f64()
                    );
                    let response = format!(
                        "Status: 504 Gateway Timeout\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{page}",
                        page.len()
                    );
                    let answered = e
                        .takeover
                        .as_ref()
                        .is_some_and(|t| t.respond(response.as_bytes()) || t.end_now());
                    late.push((*id, e.thread, e.what.clone(), elapsed, answered));
                }
                if elapsed >= timeout * 2 {
                    stuck = true;
                }
            }
        }
        for (id, thread, what, elapsed, answered) in late {
            let python = python_stack(thread);
            error!(
                request = %id,
                elapsed_s = elapsed.as_secs_f64(),
                "{what}: over --request-timeout ({} s): {}; the application's Python stack:\n{python}",
                timeout.as_secs_f64(),
                if answered {
                    "answered 504, or ended the response where it was"
                } else {
                    "the response was already complete"
                }
            );
        }
        if stuck && exit_when_stuck && !stuck_reported {
            stuck_reported = true;
            error!(
                "a request is still running at twice --request-timeout: this worker is stuck and stops, to be replaced"
            );
            shutdown.cancel();
        }
    }
}

/// The Python stack of thread `ident`, formatted like a traceback.
pub(crate) fn python_stack(ident: u64) -> String {
    Python::attach(|py| -> PyResult<String> {
        let frames = py.import("sys")?.call_method0("_current_frames")?;
        let Some(frame) = frames
            .call_method1("get", (ident,))
            .ok()
            .filter(|f| !f.is_none())
        else {
            return Ok("(the thread has no Python frame now)".into());
        };
        let lines = py
            .import("traceback")?
            .call_method1("format_stack", (frame,))?;
        let lines: Vec<String> = lines.extract()?;
        Ok(lines.concat())
    })
    .unwrap_or_else(|e| format!("(the stack could not be read: {e})"))
}
