//! Where a setting's value came from, and the messages that name it.

use std::fmt;
use std::path::PathBuf;

/// The source of one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The command line: `--threads`, or `APP` for the positional argument.
    Flag(String),
    /// An environment variable.
    Env(String),
    /// A web.config `<appSettings>` key (the file is the one that set it: inner files override
    /// their parents').
    WebConfig { file: PathBuf, key: String },
    /// A pyfcgi.toml key.
    Toml {
        file: PathBuf,
        line: usize,
        key: String,
    },
    /// Nothing set it.
    Default,
}

impl Origin {
    /// Which of the four sources (for precedence): 0 is the highest.
    pub fn rank(&self) -> u8 {
        match self {
            Self::Flag(_) => 0,
            Self::Env(_) => 1,
            Self::WebConfig { .. } => 2,
            Self::Toml { .. } => 3,
            Self::Default => 4,
        }
    }

    /// The name the user wrote (`--threads`, `PYFCGI_THREADS`, `threads`).
    pub fn key(&self) -> &str {
        match self {
            Self::Flag(k) | Self::Env(k) => k,
            Self::WebConfig { key, .. } | Self::Toml { key, .. } => key,
            Self::Default => "default",
        }
    }
}

impl fmt::Display for Origin {
    /// `--threads`, `environment variable PYFCGI_THREADS`,
    /// `web.config C:\site\web.config: PYFCGI_THREADS`, `pyfcgi.toml /srv/pyfcgi.toml line 3: threads`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Flag(flag) => f.write_str(flag),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::WebConfig { file, key } => write!(f, "web.config {}: {key}", file.display()),
            Self::Toml { file, line, key } => {
                write!(f, "pyfcgi.toml {} line {line}: {key}", file.display())
            }
            Self::Default => f.write_str("default"),
        }
    }
}

/// One thing wrong with the settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingError {
    /// A value that does not parse or is out of range.
    #[error("{origin} = {value:?}: expected {expected}")]
    Invalid {
        origin: Origin,
        value: String,
        expected: String,
    },
    /// A file that cannot be read or parsed.
    #[error("{kind} {}: {message}", file.display())]
    File {
        /// `web.config` or `pyfcgi.toml`.
        kind: &'static str,
        file: PathBuf,
        message: String,
    },
    /// Two settings that cannot go together.
    #[error("{0}")]
    Conflict(String),
}

impl SettingError {
    /// What kind of problem, for a page shown to visitors (no values, no paths).
    pub fn class(&self) -> &'static str {
        match self {
            Self::Invalid { .. } | Self::Conflict(_) => "an invalid pyfcgi setting",
            Self::File {
                kind: "web.config", ..
            } => "an unreadable web.config",
            Self::File { .. } => "an unreadable pyfcgi.toml",
        }
    }
}

/// A key that is not a setting (a warning, not an error: a typo must not take a site down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub origin: Origin,
    /// The closest known key, spelled as the source spells keys.
    pub suggestion: Option<String>,
}

impl fmt::Display for Unknown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: unknown pyfcgi setting, ignored", self.origin)?;
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean {s}?)")?;
        }
        Ok(())
    }
}
