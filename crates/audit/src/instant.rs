//! UTC instants with millisecond precision in the one text form the audit trail uses,
//! `2026-11-28T09:14:03.117Z`.

const MS_PER_DAY: i64 = 86_400_000;

/// Formats milliseconds since the Unix epoch as `YYYY-MM-DDThh:mm:ss.sssZ` (UTC).
///
/// Years outside 0000–9999 are written with as many digits as they need (and a sign when
/// negative); [`parse_ms`] accepts only the four-digit form.
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z")
}

/// Parses exactly the form [`format_ms`] writes for years 0000–9999; anything else is `None`.
pub fn parse_ms(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 24 {
        return None;
    }
    let punct = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ];
    if punct.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<i64> {
        b[from..to].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (h, mi, s, ms) = (num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    Some(days * MS_PER_DAY + ((h * 60 + mi) * 60 + s) * 1000 + ms)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's days-from-civil and civil-from-days algorithms (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        // `date -u -d 2026-11-28T09:14:03Z +%s` = 1795857243
        assert_eq!(format_ms(1_795_857_243_117), "2026-11-28T09:14:03.117Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            parse_ms("2026-11-28T09:14:03.117Z"),
            Some(1_795_857_243_117)
        );
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "2026-11-28T09:14:03Z",
            "2026-11-28T09:14:03.117+00:00",
            "2026-11-28 09:14:03.117Z",
            "2026-13-28T09:14:03.117Z",
            "2026-02-29T09:14:03.117Z",
            "2026-11-28T24:00:00.000Z",
            "2026-11-28T09:14:60.000Z",
            "2026-11-28T09:14:03.11xZ",
            "+026-11-28T09:14:03.117Z",
            "2026-11-28t09:14:03.117z",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn round_trips(ms in -62_135_596_800_000i64..253_402_300_800_000) {
            let text = format_ms(ms);
            prop_assert_eq!(parse_ms(&text), Some(ms), "{}", text);
        }
    }
}
