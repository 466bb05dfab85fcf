//! The Unix twin: Unix sockets and TCP have no client identity to take on.

use std::io;

/// Never constructed outside Windows.
pub(crate) struct Pipe(std::convert::Infallible);

impl Pipe {
    pub(crate) fn impersonate(&self) -> io::Result<()> {
        match self.0 {}
    }
}

// The same signature as the Windows twin's, which can fail.
#[allow(clippy::unnecessary_wraps)]
pub(super) fn revert() -> io::Result<()> {
    Ok(())
}

pub(super) fn thread_user() -> Option<String> {
    None
}
