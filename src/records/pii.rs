//! PII detection in free text, precision first: each detector matches a
//! token only when its structure checks out (Luhn for card numbers, mod-97
//! for IBANs, valid ranges for SSNs and IP addresses), so ordinary numbers,
//! dates and version strings are not flagged.

use std::net::{Ipv4Addr, Ipv6Addr};

/// What was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Email,
    Phone,
    PaymentCard,
    Iban,
    UsSsn,
    IpAddress,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Email => "email",
            Kind::Phone => "phone",
            Kind::PaymentCard => "payment_card",
            Kind::Iban => "iban",
            Kind::UsSsn => "us_ssn",
            Kind::IpAddress => "ip_address",
        }
    }

    /// The typed mask that replaces a match under the `redact` policy.
    pub fn mask(self) -> String {
        format!("[REDACTED:{}]", self.as_str())
    }
}

/// One match: byte range in the text and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: Kind,
    pub start: usize,
    pub end: usize,
}

/// Every PII match in `text`, non-overlapping, in order.
pub fn scan(text: &str) -> Vec<Found> {
    let mut out = Vec::new();
    for (start, end) in tokens(text) {
        let tok = &text[start..end];
        if let Some(kind) = classify(tok) {
            out.push(Found { kind, start, end });
        }
    }
    // Phone numbers and card numbers written with spaces span several
    // tokens: look at runs of digit groups too.
    let mut numbers = Vec::new();
    for (start, end) in digit_runs(text) {
        for (start, end) in outside(text, start, end, &out) {
            let run = &text[start..end];
            let digits: String = run.chars().filter(char::is_ascii_digit).collect();
            let kind = if luhn_card(&digits) {
                Some(Kind::PaymentCard)
            } else if is_phone(run, &digits) {
                Some(Kind::Phone)
            } else {
                None
            };
            if let Some(kind) = kind {
                numbers.push(Found { kind, start, end });
            }
        }
    }
    out.extend(numbers);
    out.sort_by_key(|f| f.start);
    out
}

/// The parts of the digit run `[start, end)` outside the token matches in
/// `found`: a run may begin or end inside an address, and the digits beside
/// it may still be a number. Each part starts at a digit, `+` or `(` and
/// ends at a digit.
fn outside(text: &str, start: usize, end: usize, found: &[Found]) -> Vec<(usize, usize)> {
    let mut hits: Vec<(usize, usize)> = found
        .iter()
        .filter(|f| f.start < end && start < f.end)
        .map(|f| (f.start, f.end))
        .collect();
    hits.sort_unstable();
    let mut gaps = Vec::new();
    let mut at = start;
    for (s, e) in hits {
        if s > at {
            gaps.push((at, s));
        }
        at = at.max(e);
    }
    if at < end {
        gaps.push((at, end));
    }
    gaps.into_iter()
        .filter_map(|(s, e)| {
            let part = &text[s..e];
            let rest = part.trim_start_matches(|c: char| !matches!(c, '0'..='9' | '+' | '('));
            let s = s + part.len() - rest.len();
            let e = s + rest.trim_end_matches(|c: char| !c.is_ascii_digit()).len();
            (s < e).then_some((s, e))
        })
        .collect()
}

/// Replaces every match with its typed mask.
pub fn redact(text: &str, found: &[Found]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for f in found {
        if f.start < at {
            continue;
        }
        out.push_str(&text[at..f.start]);
        out.push_str(&f.kind.mask());
        at = f.end;
    }
    out.push_str(&text[at..]);
    out
}

/// Whitespace-separated tokens, trimmed of surrounding punctuation that is
/// not part of any detected form.
fn tokens(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices().chain([(text.len(), ' ')]) {
        let sep = c.is_whitespace() || matches!(c, ',' | ';' | '(' | ')' | '<' | '>' | '"' | '\'');
        match (start, sep) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                let (mut s2, mut e2) = (s, i);
                let tok = &text[s..i];
                let trimmed_start = tok.len() - tok.trim_start_matches(['[', '{']).len();
                let trimmed_end =
                    tok.len() - tok.trim_end_matches(['.', ':', '!', '?', ']', '}']).len();
                s2 += trimmed_start;
                e2 -= trimmed_end;
                if s2 < e2 {
                    out.push((s2, e2));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// Runs of digits joined by single spaces, dashes, dots or parentheses,
/// optionally led by `+` (phone numbers, spaced card numbers).
fn digit_runs(text: &str) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit()
            || ((b[i] == b'+' || b[i] == b'(') && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        let word_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'.');
        if !starts || word_before {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut j = i;
        while j < b.len() {
            let c = b[j];
            if c.is_ascii_digit() {
                j += 1;
                end = j;
            } else if is_sep(c) && {
                // One or two separators (`) `, ` (`) then a digit.
                let k = if b.get(j + 1).copied().is_some_and(is_sep) {
                    j + 2
                } else {
                    j + 1
                };
                b.get(k).is_some_and(u8::is_ascii_digit)
            } {
                j += 1;
            } else {
                break;
            }
        }
        // A letter glued to the end means it is part of a word (an id).
        if !b.get(end).is_some_and(u8::is_ascii_alphabetic) {
            out.push((start, end));
        }
        i = j.max(i + 1);
    }
    out
}

fn is_sep(c: u8) -> bool {
    matches!(c, b' ' | b'-' | b'.' | b'(' | b')' | b'+')
}

fn classify(tok: &str) -> Option<Kind> {
    if is_email(tok) {
        Some(Kind::Email)
    } else if is_iban(tok) {
        Some(Kind::Iban)
    } else if is_ssn(tok) {
        Some(Kind::UsSsn)
    } else if is_ip(tok) {
        Some(Kind::IpAddress)
    } else {
        None
    }
}

fn is_email(t: &str) -> bool {
    let Some((local, domain)) = t.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._%+-".contains(&c))
        && !local.starts_with('.')
        && !local.ends_with('.');
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

/// 13 to 19 digits passing the Luhn check, with a known network prefix.
fn luhn_card(digits: &str) -> bool {
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let prefix_ok = matches!(digits.as_bytes()[0], b'2'..=b'6');
    let mut sum = 0u32;
    for (i, c) in digits.bytes().rev().enumerate() {
        let mut d = u32::from(c - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    prefix_ok && sum % 10 == 0
}

/// E.164 (`+` and 8 to 15 digits) or a North American number written with
/// separators (`(555) 123-4567`, `555-123-4567`). Bare digit strings are not
/// phones: they are far more often ids or amounts.
fn is_phone(run: &str, digits: &str) -> bool {
    if run.starts_with('+') {
        return (8..=15).contains(&digits.len()) && !digits.starts_with('0');
    }
    let separated = run.contains(['-', ' ', '(', '.']);
    if !separated {
        return false;
    }
    // Dates (2026-11-23, 23.11.2026) are not phones.
    let groups: Vec<&str> = run
        .split(|c: char| !c.is_ascii_digit())
        .filter(|g| !g.is_empty())
        .collect();
    digits.len() == 10
        && matches!(groups.as_slice(), [a, b, c] if a.len() == 3 && b.len() == 3 && c.len() == 4)
        && !digits.starts_with(['0', '1'])
}

/// `AAA-GG-SSSS` with the SSA's invalid ranges excluded.
fn is_ssn(t: &str) -> bool {
    let p: Vec<&str> = t.split('-').collect();
    let [a, g, s] = p.as_slice() else {
        return false;
    };
    if a.len() != 3 || g.len() != 2 || s.len() != 4 {
        return false;
    }
    if ![a, g, s]
        .iter()
        .all(|x| x.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    let area: u32 = a.parse().unwrap_or(0);
    area != 0 && area != 666 && area < 900 && *g != "00" && *s != "0000"
}

/// ISO 13616: country code, check digits, 11 to 30 alphanumerics, mod 97 = 1.
fn is_iban(t: &str) -> bool {
    let t: String = t.chars().filter(|c| *c != ' ').collect();
    let b = t.as_bytes();
    if !(15..=34).contains(&b.len())
        || !b[..2].iter().all(u8::is_ascii_uppercase)
        || !b[2..4].iter().all(u8::is_ascii_digit)
        || !b[4..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
    {
        return false;
    }
    let mut rem = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A dotted-quad IPv4 address or an IPv6 address with at least two colons.
/// Version strings (1.2.3.4 is an address; 1.2.3 is not) are a known
/// ambiguity: four dotted numbers ≤ 255 are reported.
fn is_ip(t: &str) -> bool {
    if t.matches('.').count() == 3 && t.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        return t.parse::<Ipv4Addr>().is_ok();
    }
    t.matches(':').count() >= 2
        && t.bytes()
            .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        && t.parse::<Ipv6Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(t: &str) -> Vec<Kind> {
        scan(t).into_iter().map(|f| f.kind).collect()
    }

    #[test]
    fn true_positives() {
        assert_eq!(kinds("mail jane.doe@example.co.uk now"), [Kind::Email]);
        assert_eq!(kinds("card 4111 1111 1111 1111."), [Kind::PaymentCard]);
        assert_eq!(kinds("4111-1111-1111-1111"), [Kind::PaymentCard]);
        assert_eq!(kinds("5500005555555559"), [Kind::PaymentCard]);
        assert_eq!(kinds("call +44 20 7946 0958"), [Kind::Phone]);
        assert_eq!(kinds("(415) 555-2671"), [Kind::Phone]);
        assert_eq!(kinds("ssn 123-45-6789"), [Kind::UsSsn]);
        assert_eq!(kinds("IBAN GB82WEST12345698765432"), [Kind::Iban]);
        assert_eq!(kinds("DE89370400440532013000"), [Kind::Iban]);
        assert_eq!(kinds("from 192.168.10.7"), [Kind::IpAddress]);
        assert_eq!(kinds("via 2001:db8::8a2e:370:7334"), [Kind::IpAddress]);
    }

    #[test]
    fn known_negatives() {
        for t in [
            "4111 1111 1111 1112",       // 16 digits failing Luhn: not a card
            "1234567890123456",          // fails Luhn
            "order 20261123 shipped",    // a bare number
            "on 2026-11-23 at 10:00",    // a date
            "23.11.2026",                // a date
            "version 1.2.3",             // three parts: not an IPv4 address
            "999.1.1.1",                 // out of range
            "000-12-3456",               // invalid SSN area
            "666-12-3456",               // invalid SSN area
            "123-00-4567",               // invalid SSN group
            "GB82WEST12345698765431",    // IBAN with a bad check
            "user@localhost",            // no TLD
            "a@b.c",                     // one-letter TLD
            "invoice INV-555-123-4567x", // glued to a word
            "ref 12:34",                 // a time
            "0123456789",                // a bare 10-digit number
        ] {
            assert_eq!(kinds(t), [], "{t}");
        }
    }

    #[test]
    fn redaction_masks_each_match_with_its_kind() {
        let t = "write to bob@example.org or 123-45-6789.";
        let f = scan(t);
        assert_eq!(
            redact(t, &f),
            "write to [REDACTED:email] or [REDACTED:us_ssn]."
        );
    }

    #[test]
    fn a_number_next_to_another_match_is_still_found() {
        // Found by the `pii` fuzz target: the digit run "+44 20 7946 090"
        // reached into the address "090::1:2" (or, second case, began in
        // "fe80::10") and was dropped whole, so redaction left the phone
        // number in clear.
        let t = "fe80::10 +44 20 7946 here";
        let f = scan(t);
        assert_eq!(redact(t, &f), "[REDACTED:ip_address] [REDACTED:phone] here");
        let t = "call +44 20 7946 090::1:2 today";
        let f = scan(t);
        assert_eq!(
            f.iter().map(|f| f.kind).collect::<Vec<_>>(),
            [Kind::Phone, Kind::IpAddress]
        );
        assert_eq!(
            redact(t, &f),
            "call [REDACTED:phone] [REDACTED:ip_address] today"
        );
    }
}
