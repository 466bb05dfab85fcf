//! Who gets the core when an I/O thread and the app's threads share it.
//!
//! With one Python thread and one I/O thread on a core, the I/O thread wakes whenever a
//! request arrives and, as a fresh waker, preempts the Python thread in the middle of the
//! app: one involuntary switch (and a cold cache for the app, costly for Django's working
//! set) per request. Marked `SCHED_BATCH`, the I/O thread no longer preempts on wake-up
//! (Linux's scheduler lets batch tasks run at the next tick or when the app's thread waits);
//! it then reads every request that arrived meanwhile in one go and hands them over in one
//! wake-up. Its fair share of the core is unchanged, so a busy app cannot starve it. The
//! app's threads are set back to the normal policy explicitly, since threads inherit it.
//!
//! Linux only; elsewhere these do nothing (Windows under IIS sends one request at a time).

/// Marks the calling thread as an I/O thread (`SCHED_BATCH`); false when that is not
/// possible here.
pub fn io_thread() -> bool {
    imp::set_policy(imp::BATCH)
}

/// Marks the calling thread as one that runs the app (the normal policy).
pub fn app_thread() -> bool {
    imp::set_policy(imp::NORMAL)
}

#[cfg(target_os = "linux")]
mod imp {
    pub(super) const BATCH: libc::c_int = libc::SCHED_BATCH;
    pub(super) const NORMAL: libc::c_int = libc::SCHED_OTHER;

    pub(super) fn set_policy(policy: libc::c_int) -> bool {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread on Linux; `param` outlives the call. Batch and
        // normal need no privilege.
        unsafe { libc::sched_setscheduler(0, policy, &raw const param) == 0 }
    }

    /// The calling thread's policy.
    #[cfg(test)]
    pub(super) fn policy() -> libc::c_int {
        // SAFETY: queries the calling thread.
        unsafe { libc::sched_getscheduler(0) }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) const BATCH: i32 = 0;
    pub(super) const NORMAL: i32 = 0;

    pub(super) fn set_policy(_policy: i32) -> bool {
        false
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn an_io_thread_is_batch_and_its_app_threads_are_normal_again() {
        std::thread::spawn(|| {
            assert!(io_thread());
            assert_eq!(imp::policy(), libc::SCHED_BATCH);
            // Threads inherit the policy: an app thread started here must reset it.
            std::thread::spawn(|| {
                assert_eq!(imp::policy(), libc::SCHED_BATCH);
                assert!(app_thread());
                assert_eq!(imp::policy(), libc::SCHED_OTHER);
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
}
