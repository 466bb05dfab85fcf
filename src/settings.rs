//! Pure parsing of `serve` settings: the value parsers the command line uses (sizes, modes,
//! worker counts, ...), `pyfcgi.toml` into (flag, values) pairs, and flag lookup in a raw
//! argument list. No I/O, no globals, only std and `toml`: fuzz/fuzz_targets/settings.rs
//! compiles this file into its target as it is, so keep it free of `crate::` paths.

/// Settings as (flag name, values) pairs; several values for repeatable flags.
pub type Pairs = Vec<(String, Vec<String>)>;

/// Why `pyfcgi.toml` text does not give settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TomlError {
    /// Not TOML at all; the parser's message (with line and column).
    Syntax(String),
    /// A key whose value is a table, a date, or a list holding one.
    BadValue(String),
}

impl std::fmt::Display for TomlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "not valid TOML: {e}"),
            Self::BadValue(key) => write!(
                f,
                "{key} must be a string, number, boolean or a list of them"
            ),
        }
    }
}

/// The settings of a `pyfcgi.toml`: each key (`max_body_size` or `max-body-size`) as the flag
/// name, each value as text; a list gives several values.
pub fn toml_pairs(text: &str) -> Result<Pairs, TomlError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| TomlError::Syntax(e.to_string().trim_end().to_owned()))?;
    let mut pairs = Vec::new();
    for (key, value) in table {
        let values = match value {
            toml::Value::Array(items) => items
                .iter()
                .map(|v| scalar(v, &key))
                .collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(&v, &key)?],
        };
        pairs.push((key.replace('_', "-"), values));
    }
    Ok(pairs)
}

fn scalar(v: &toml::Value, key: &str) -> Result<String, TomlError> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        _ => return Err(TomlError::BadValue(key.to_owned())),
    })
}

/// `--name VALUE` or `--name=VALUE` in `args` (before any `--`).
pub fn flag_value(args: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    let eq = format!("--{name}=");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            break;
        }
        if *a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&eq) {
            return Some(v.to_owned());
        }
    }
    None
}

/// Whether `--name` appears in `args` in either spelling (before any `--`).
pub fn flag_value_present(args: &[String], name: &str) -> bool {
    let long = format!("--{name}");
    let eq = format!("--{name}=");
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| *a == long || a.starts_with(&eq))
}

/// Parses `10`, `64k`, `1m`, `2g` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'm')) => (&t[..i], 1 << 20),
        Some((i, 'g')) => (&t[..i], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 1048576, 512k, 10m or 1g"))
}

pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

pub fn parse_script_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s == "/" {
        return Ok(String::new());
    }
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with '/', like /myapp"));
    }
    Ok(s.trim_end_matches('/').to_owned())
}

pub fn parse_workers(s: &str) -> Result<usize, String> {
    if s.eq_ignore_ascii_case("auto") {
        return Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    }
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "{s:?} is not a worker count: use 1 to 1024, or auto"
        )),
    }
}

pub fn parse_mode(s: &str) -> Result<u32, String> {
    let s = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode like 660"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_keys_become_flags_and_lists_repeat() {
        let pairs = toml_pairs(
            "max_body_size = \"10m\"\nthreads = 4\ndetailed-errors = true\npythonpath = [\"/a\", \"/b\"]\n",
        )
        .unwrap();
        assert!(pairs.contains(&("max-body-size".into(), vec!["10m".into()])));
        assert!(pairs.contains(&("threads".into(), vec!["4".into()])));
        assert!(pairs.contains(&("detailed-errors".into(), vec!["true".into()])));
        assert!(pairs.contains(&("pythonpath".into(), vec!["/a".into(), "/b".into()])));
    }

    #[test]
    fn bad_toml_says_where_and_which_key() {
        let e = toml_pairs("threads = \n").unwrap_err();
        assert!(
            matches!(&e, TomlError::Syntax(m) if m.contains("line 1")),
            "{e}"
        );
        let e = toml_pairs("[serve]\nthreads = 4\n").unwrap_err();
        assert_eq!(e, TomlError::BadValue("serve".into()));
        assert_eq!(
            toml_pairs("bind = [{ a = 1 }]").unwrap_err().to_string(),
            "bind must be a string, number, boolean or a list of them"
        );
    }

    #[test]
    fn sizes_parse_and_overflow_is_an_error() {
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size(" 2G "), Ok(2 << 30));
        assert_eq!(parse_size("10"), Ok(10));
        for bad in [
            "",
            "k",
            "-1m",
            "1.5m",
            "99999999999999999999g",
            "17179869184g",
            "1t",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modes_and_workers() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("8").is_err() && parse_mode("77777").is_err());
        assert_eq!(parse_workers("3"), Ok(3));
        assert!(parse_workers("auto").is_ok_and(|n| n >= 1));
        assert!(parse_workers("0").is_err() && parse_workers("1025").is_err());
    }
}
