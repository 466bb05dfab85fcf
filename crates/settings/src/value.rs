//! Value parsers. Each takes the text a user wrote and returns the typed value, or what was
//! expected (the message names the source and the value around it). Every number is
//! range-checked: no NaN, no infinity, nothing that overflows later arithmetic.

use std::time::Duration;

/// The longest duration any setting takes: a year.
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// A whole number in `min..=max`.
pub fn count(s: &str, min: u64, max: u64) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("a whole number from {min} to {max}"))
}

/// [`count`] as a `usize`.
pub fn count_usize(s: &str, min: usize, max: usize) -> Result<usize, String> {
    count(s, min as u64, max as u64).map(|n| n as usize)
}

/// Seconds (`30`, `2.5`), at most [`MAX_SECONDS`]; `None` for 0 when `zero_is_none`.
pub fn seconds(s: &str, zero_means: Option<&str>) -> Result<Option<Duration>, String> {
    let expected = || match zero_means {
        Some(z) => format!("a number of seconds from 0 to {MAX_SECONDS} (0 = {z})"),
        None => format!("a number of seconds from 0 to {MAX_SECONDS}"),
    };
    let v: f64 = s.trim().parse().map_err(|_| expected())?;
    if !v.is_finite() || !(0.0..=MAX_SECONDS).contains(&v) {
        return Err(expected());
    }
    if v == 0.0 && zero_means.is_some() {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(v)))
}

/// Seconds that must be above zero.
pub fn positive_seconds(s: &str, min: f64) -> Result<Duration, String> {
    let expected = || format!("a number of seconds from {min} to {MAX_SECONDS}");
    let v: f64 = s.trim().parse().map_err(|_| expected())?;
    if !v.is_finite() || !(min..=MAX_SECONDS).contains(&v) {
        return Err(expected());
    }
    Ok(Duration::from_secs_f64(v))
}

/// `10`, `64k`, `1m`, `2g` (powers of 1024), at most `max`.
pub fn size(s: &str, max: u64) -> Result<u64, String> {
    let expected = || {
        format!(
            "a size like 1048576, 512k, 10m or 1g, at most {}",
            human(max)
        )
    };
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
        .filter(|n| *n <= max)
        .ok_or_else(expected)
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{}g", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}m", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}k", n >> 10),
        n => n.to_string(),
    }
}

/// `true`/`false` and their usual spellings (an empty value is false: an empty web.config
/// value switches a setting off).
pub fn switch(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("true or false".to_owned()),
    }
}

/// One of `choices` (case-insensitive).
pub fn choice<T: Copy>(s: &str, choices: &[(&str, T)]) -> Result<T, String> {
    let t = s.trim();
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(t))
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            format!("one of {}", names.join(", "))
        })
}

/// `NAME=VALUE`.
pub fn env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("NAME=VALUE".to_owned()),
    }
}

/// A mount prefix: empty or `/` for none, else `/something` (a trailing `/` is dropped).
pub fn script_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s == "/" {
        return Ok(String::new());
    }
    if !s.starts_with('/') {
        return Err("a path starting with '/', like /myapp".to_owned());
    }
    Ok(s.trim_end_matches('/').to_owned())
}

/// A worker count, 1 to 1024, or `auto` (the number of CPUs).
pub fn workers(s: &str) -> Result<usize, String> {
    if s.trim().eq_ignore_ascii_case("auto") {
        return Ok(std::thread::available_parallelism().map_or(1, std::num::NonZero::get));
    }
    count_usize(s, 1, 1024).map_err(|_| "a whole number from 1 to 1024, or auto".to_owned())
}

/// An octal file mode like `660` or `0o600`.
pub fn mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let t = t.strip_prefix("0o").unwrap_or(t);
    u32::from_str_radix(t, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| "an octal file mode like 660".to_owned())
}

/// A regular expression (the `regex` crate's syntax).
pub fn regex(s: &str) -> Result<String, String> {
    match regex::Regex::new(s) {
        Ok(_) => Ok(s.to_owned()),
        Err(e) => Err(format!(
            "a regular expression ({})",
            e.to_string().lines().last().unwrap_or("invalid").trim()
        )),
    }
}

/// A path: anything but empty.
pub fn path(s: &str) -> Result<std::path::PathBuf, String> {
    if s.is_empty() {
        return Err("a path (the value is empty)".to_owned());
    }
    Ok(std::path::PathBuf::from(s))
}

/// Non-empty text.
pub fn text(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("a value (it is empty)".to_owned());
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_range_checked_and_never_panic() {
        assert_eq!(count("4", 1, 1024), Ok(4));
        for bad in [
            "four",
            "0",
            "1025",
            "-1",
            "",
            "1e3",
            "99999999999999999999999",
        ] {
            assert_eq!(
                count(bad, 1, 1024),
                Err("a whole number from 1 to 1024".into()),
                "{bad}"
            );
        }
        for bad in ["inf", "-inf", "NaN", "-1", "1e300", "40000000", "x"] {
            assert!(seconds(bad, Some("never")).is_err(), "{bad}");
            assert!(positive_seconds(bad, 1.0).is_err(), "{bad}");
        }
        assert_eq!(seconds("0", Some("never")), Ok(None));
        assert_eq!(seconds("2.5", None), Ok(Some(Duration::from_millis(2500))));
        assert!(positive_seconds("0.5", 1.0).is_err());
    }

    #[test]
    fn sizes_parse_and_overflow_is_an_error() {
        assert_eq!(size("64k", u64::MAX), Ok(64 << 10));
        assert_eq!(size(" 2G ", u64::MAX), Ok(2 << 30));
        for bad in [
            "",
            "k",
            "-1m",
            "1.5m",
            "99999999999999999999g",
            "17179869184g",
            "1t",
        ] {
            assert!(size(bad, u64::MAX).is_err(), "{bad}");
        }
        assert_eq!(
            size("2g", 1 << 30),
            Err("a size like 1048576, 512k, 10m or 1g, at most 1g".into())
        );
    }

    #[test]
    fn switches_choices_modes_workers() {
        assert_eq!(switch("Yes"), Ok(true));
        assert_eq!(switch(""), Ok(false));
        assert!(switch("maybe").is_err());
        assert_eq!(choice("ASGI", &[("wsgi", 1), ("asgi", 2)]), Ok(2));
        assert_eq!(
            choice("x", &[("wsgi", 1), ("asgi", 2)]),
            Err("one of wsgi, asgi".into())
        );
        assert_eq!(mode("660"), Ok(0o660));
        assert_eq!(mode("0o600"), Ok(0o600));
        assert!(mode("8").is_err() && mode("77777").is_err());
        assert_eq!(workers("3"), Ok(3));
        assert!(workers("auto").is_ok_and(|n| n >= 1));
        assert!(workers("0").is_err() && workers("1025").is_err());
        assert!(regex("(").is_err());
        assert_eq!(script_name("/app/"), Ok("/app".into()));
        assert!(script_name("app").is_err());
    }
}
