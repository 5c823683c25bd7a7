//! Numbers in request bodies must be stored as they were written.
//!
//! JSON numbers become 64-bit integers or IEEE doubles. A larger integer
//! would silently turn into a rounded double, and `1e-400` into `0.0`; such a
//! body is refused (422 `invalid_number`) instead of being changed.

use axum::http::StatusCode;

use super::problem::Problem;

fn refuse(token: &str, why: &str) -> Problem {
    let shown: String = token.chars().take(40).collect();
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_number",
        format!("the number {shown} cannot be stored exactly: {why}"),
    )
}

/// A decimal number reduced to sign, significant digits and exponent, so
/// two spellings of one value compare equal. `None` digits: zero.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    neg: bool,
    digits: String,
    exp: i64,
}

fn normalize(token: &str) -> Option<Decimal> {
    let (neg, rest) = match token.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, token),
    };
    let (mantissa, exp) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all = format!("{int}{frac}");
    let trimmed = all.trim_start_matches('0');
    let sig = trimmed.trim_end_matches('0');
    if sig.is_empty() {
        return Some(Decimal {
            neg: false,
            digits: String::new(),
            exp: 0,
        });
    }
    let trailing = (trimmed.len() - sig.len()) as i64;
    Some(Decimal {
        neg,
        digits: sig.to_owned(),
        exp: exp.checked_sub(frac.len() as i64)?.checked_add(trailing)?,
    })
}

/// Checks one number token as JSON spells it.
fn check_number(token: &str) -> Result<(), Problem> {
    let integer = !token.contains(['.', 'e', 'E']);
    if integer {
        if token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok() {
            return Ok(());
        }
        return Err(refuse(token, "integers must fit in 64 bits"));
    }
    let value: f64 = token.parse().map_err(|_| refuse(token, "not a number"))?;
    if !value.is_finite() {
        return Err(refuse(token, "out of range"));
    }
    let written = normalize(token).ok_or_else(|| refuse(token, "exponent out of range"))?;
    // `{:e}` prints the shortest digits that read back as the same double.
    // When two spellings of that length are equally near (a tie), Rust's
    // formatter and serde_json's (which writes stored values back out) may
    // pick different ones: both are the value written.
    let stored = normalize(&format!("{value:e}"));
    let as_json = serde_json::Number::from_f64(value).and_then(|n| normalize(&n.to_string()));
    if stored.as_ref() != Some(&written) && as_json.as_ref() != Some(&written) {
        return Err(refuse(
            token,
            "it has more precision or range than a 64-bit double",
        ));
    }
    Ok(())
}

/// Checks every number in a JSON text (strings are skipped). Malformed JSON
/// is left to the parser, which names the error.
pub fn check(body: &[u8]) -> Result<(), Problem> {
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i += 1;
                while i < body.len() && body[i] != b'"' {
                    i += if body[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < body.len()
                    && matches!(body[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                if let Ok(token) = std::str::from_utf8(&body[start..i]) {
                    check_number(token)?;
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_numbers_pass() {
        for ok in [
            "0",
            "-0",
            "42",
            "-9223372036854775808",
            "18446744073709551615",
            "0.1",
            "1.5",
            "-2.25e3",
            "1e-7",
            "0.30000000000000004",
            "1.0",
            "100.000",
            "0.0",
            "5e-324",
            "1.7976931348623157e308",
        ] {
            assert!(check_number(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn inexact_numbers_are_refused() {
        for bad in [
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890",
            "1e-400",
            "1e400",
            "0.1000000000000000000001",
            "1e99999999999999999999",
        ] {
            let e = check_number(bad).unwrap_err();
            assert_eq!(e.code, "invalid_number", "{bad}");
        }
    }

    #[test]
    fn accepted_numbers_parse_to_the_value_written() {
        // Found by the admin_line fuzz target: serde_json's default float
        // parsing read 3.99999999999e61 one ulp off, so a body this check
        // accepted was stored changed.
        for t in [
            "3.99999999999e61",
            "1.7976931348623157e308",
            "5e-324",
            "0.1",
        ] {
            assert!(check_number(t).is_ok(), "{t}");
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            assert_eq!(v.as_f64(), Some(t.parse::<f64>().unwrap()), "{t}");
        }
    }

    #[test]
    fn both_spellings_of_a_tie_pass_and_an_accepted_body_passes_again_re_encoded() {
        // Found by the api_json fuzz target: 1844674407370950.3 and .2 are
        // equally near the double 1844674407370950.25; Rust's formatter
        // gave one, serde_json wrote the other, and the re-encoded body
        // failed the check the original passed.
        for t in ["1844674407370950.3", "1844674407370950.2"] {
            assert!(check_number(t).is_ok(), "{t}");
        }
        let body =
            br#"{"a":[2,-0,1e-7,1844674407370950.3000000000000,18446744073709515615,0e-7,6e-4]}"#;
        assert!(check(body).is_ok());
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert!(check(&serde_json::to_vec(&v).unwrap()).is_ok());
    }

    #[test]
    fn strings_are_skipped_and_nested_numbers_found() {
        assert!(check(br#"{"a":"1e-400 \" 99999999999999999999999","b":[1,2.5]}"#).is_ok());
        assert!(check(br#"{"a":{"b":[1, 1e-400]}}"#).is_err());
        assert!(check(br#"{"big":99999999999999999999}"#).is_err());
    }
}
