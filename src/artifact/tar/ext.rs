//! Extension records: PAX (`x`, `g`, Solaris `X`) key/value records and GNU long names
//! (`L`, `K`).
//!
//! Records keep their order (PAX sparse 0.0 repeats `GNU.sparse.offset`/`numbytes` pairs)
//! and their bytes (paths need not be UTF-8). The reader has already capped how much of
//! this it reads; parsing is linear in the input.

/// PAX records in archive order: (key, value).
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

/// Parses PAX records: `LEN KEY=VALUE\n`, where LEN counts the whole record. Trailing NUL
/// padding is allowed; anything else malformed is an error describing it.
pub fn parse_pax(data: &[u8]) -> Result<Records, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 19 || rest.get(digits) != Some(&b' ') {
            return Err("a PAX record does not start with its length".into());
        }
        let len: usize = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("a PAX record length is not a number")?;
        if len <= digits + 1 || len > rest.len() {
            return Err(format!(
                "a PAX record claims {len} bytes, past the header's end"
            ));
        }
        let record = &rest[digits + 1..len];
        let Some((&b'\n', body)) = record.split_last() else {
            return Err("a PAX record does not end with a newline".into());
        };
        let eq = body
            .iter()
            .position(|b| *b == b'=')
            .ok_or("a PAX record has no '='")?;
        if eq == 0 {
            return Err("a PAX record has an empty key".into());
        }
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        rest = &rest[len..];
    }
    Ok(out)
}

/// A GNU `L`/`K` long name: the data up to the first NUL.
pub fn long_name(data: &[u8]) -> Vec<u8> {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    data[..end].to_vec()
}

/// Applies global records (`g`) to the running set: a later value replaces an earlier one,
/// an empty value deletes the key.
pub fn merge_globals(globals: &mut Records, new: Records) {
    for (k, v) in new {
        globals.retain(|(gk, _)| *gk != k);
        if !v.is_empty() {
            globals.push((k, v));
        }
    }
}

/// The records in force for one entry: its own (`x`, `X`), then the global ones (`g`). An
/// empty value of its own hides a global one.
pub struct Pax<'a> {
    pub local: &'a Records,
    pub global: &'a Records,
}

impl Pax<'_> {
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        match self.local.iter().rev().find(|(k, _)| k == key.as_bytes()) {
            Some((_, v)) => Some(v.as_slice()).filter(|v| !v.is_empty()),
            None => last(self.global, key),
        }
    }
}

/// Bytes held by `records`.
pub fn size(records: &Records) -> u64 {
    records
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum()
}

/// The last value of `key` in `records`, if set and not empty.
pub fn last<'a>(records: &'a [(Vec<u8>, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    records
        .iter()
        .rev()
        .find(|(k, _)| k == key.as_bytes())
        .map(|(_, v)| v.as_slice())
        .filter(|v| !v.is_empty())
}

/// A decimal integer value.
pub fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// A PAX time (`-12.5`, `1700000000.123456789`): whole seconds, rounded down.
pub fn seconds(value: &[u8]) -> Option<i64> {
    let (neg, digits) = match value.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, value),
    };
    let (whole, frac) = match digits.iter().position(|b| *b == b'.') {
        Some(i) => (&digits[..i], &digits[i + 1..]),
        None => (digits, &digits[..0]),
    };
    if !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let whole = i64::try_from(decimal(whole)?).ok()?;
    let has_frac = frac.iter().any(|b| *b != b'0');
    Some(if neg {
        -whole - i64::from(has_frac)
    } else {
        whole
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &[u8]) -> Vec<u8> {
        let body = [k.as_bytes(), b"=", v, b"\n"].concat();
        let mut n = body.len() + 2;
        loop {
            let len = n.to_string().len() + 1 + body.len();
            if len == n {
                break;
            }
            n = len;
        }
        [n.to_string().as_bytes(), b" ", &body].concat()
    }

    #[test]
    fn parses_records_in_order_with_binary_values() {
        let data = [
            rec("path", b"d\xffir/name"),
            rec("GNU.sparse.offset", b"0"),
            rec("GNU.sparse.offset", b"4096"),
            rec("comment", b"a=b\nc"),
        ]
        .concat();
        let r = parse_pax(&data).unwrap();
        assert_eq!(r.len(), 4);
        assert_eq!(r[0], (b"path".to_vec(), b"d\xffir/name".to_vec()));
        assert_eq!(r[2].1, b"4096");
        assert_eq!(r[3].1, b"a=b\nc");
        assert_eq!(last(&r, "GNU.sparse.offset"), Some(&b"4096"[..]));
        let padded = [rec("uid", b"7"), vec![0; 20]].concat();
        assert_eq!(parse_pax(&padded).unwrap().len(), 1);
    }

    #[test]
    fn malformed_records_are_errors() {
        for bad in [
            &b"x path=a\n"[..],
            b"99 path=a\n",
            b"11 path=abc",
            b"10 pathab\n",
            b"7 =abc\n",
            b"3 a\n",
            b"99999999999999999999999 a=b\n",
        ] {
            assert!(
                parse_pax(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn globals_merge_and_delete() {
        let mut g = vec![(b"uid".to_vec(), b"1".to_vec())];
        merge_globals(&mut g, vec![(b"gid".to_vec(), b"2".to_vec())]);
        merge_globals(&mut g, vec![(b"uid".to_vec(), Vec::new())]);
        assert_eq!(g, vec![(b"gid".to_vec(), b"2".to_vec())]);
        assert_eq!(size(&g), 4);
        let local = vec![
            (b"gid".to_vec(), Vec::new()),
            (b"uname".to_vec(), b"u".to_vec()),
        ];
        let view = Pax {
            local: &local,
            global: &g,
        };
        assert_eq!(
            (view.get("gid"), view.get("uname")),
            (None, Some(&b"u"[..]))
        );
        let none = Vec::new();
        let globals_only = Pax {
            local: &none,
            global: &g,
        };
        assert_eq!(globals_only.get("gid"), Some(&b"2"[..]));
    }

    #[test]
    fn numbers_and_times() {
        assert_eq!(decimal(b"8589934592"), Some(8 << 30));
        assert_eq!(decimal(b"-1"), None);
        assert_eq!(decimal(b""), None);
        assert_eq!(seconds(b"1700000000.5"), Some(1_700_000_000));
        assert_eq!(seconds(b"-1.5"), Some(-2));
        assert_eq!(seconds(b"-3"), Some(-3));
        assert_eq!(seconds(b"12.x"), None);
        assert_eq!(long_name(b"a/long/name\0\0\0"), b"a/long/name");
    }
}
