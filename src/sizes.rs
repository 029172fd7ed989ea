//! Byte sizes as operators write them: a bare number of bytes, or a number with a binary
//! unit (`512KiB`, `64MiB`, `8GiB`, `1TiB`), for the deploy limits in the config file.
//!
//! A leaf module (no crate imports). Overflow is an error, never a wrapped value.

/// Parses `8GiB`, `512 MiB`, `1024` (bytes). Units: B, KiB, MiB, GiB, TiB.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("{text:?} is not a size like 1048576, 512MiB or 8GiB");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Formats a size with the largest binary unit that divides it (`8GiB`, `1500B`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8 GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        for bad in ["", "GiB", "1.5GiB", "8GB", "-1", "1 PiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("99999999999TiB").is_err());
        assert_eq!(format_size(8 << 30), "8GiB");
        assert_eq!(format_size(1500), "1500B");
        assert_eq!(format_size(0), "0B");
    }
}
