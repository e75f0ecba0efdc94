//! FHIR date, dateTime and instant text to and from milliseconds since the Unix epoch, with the
//! `[lo, hi)` range a partial value covers.

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Civil date of a day count from 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const DAY_MS: i64 = 86_400_000;

/// Formats ms since the epoch as an instant: `2024-01-02T03:04:05.678Z`.
pub fn format_ms(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let rem = ms.rem_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

/// The current time in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn num(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(crate) fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Parses a FHIR date, dateTime or instant (possibly partial: `2020`, `2020-03`, `2020-03-04`,
/// `2020-03-04T10:00`, with seconds, fractions and zone) into the `[lo, hi)` ms range it covers.
/// A dateTime without a zone is read as UTC.
pub fn parse_range(s: &str) -> Option<(i64, i64)> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date.split('-');
    let ys = parts.next()?;
    if ys.len() != 4 {
        return None;
    }
    let y = i64::from(num(ys)?);
    let m = parts
        .next()
        .map(|p| if p.len() == 2 { num(p) } else { None });
    let d = parts
        .next()
        .map(|p| if p.len() == 2 { num(p) } else { None });
    if parts.next().is_some() {
        return None;
    }
    let (m, d) = (
        m.map_or(Ok(None), |v| v.ok_or(()).map(Some)).ok()?,
        d.map_or(Ok(None), |v| v.ok_or(()).map(Some)).ok()?,
    );
    match (m, d, time) {
        (None, None, None) => Some((
            days_from_civil(y, 1, 1) * DAY_MS,
            days_from_civil(y + 1, 1, 1) * DAY_MS,
        )),
        (Some(m), None, None) if (1..=12).contains(&m) => {
            let lo = days_from_civil(y, m, 1) * DAY_MS;
            Some((lo, lo + i64::from(days_in_month(y, m)) * DAY_MS))
        }
        (Some(m), Some(d), t) if (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m) => {
            let day = days_from_civil(y, m, d) * DAY_MS;
            match t {
                None => Some((day, day + DAY_MS)),
                Some(t) => parse_time(t).map(|(off, width)| (day + off, day + off + width)),
            }
        }
        _ => None,
    }
}

/// Parses `hh:mm[:ss[.fff]][Z|±hh:mm]` into (ms offset from the UTC day start, precision width).
fn parse_time(t: &str) -> Option<(i64, i64)> {
    let (clock, zone_ms) = if let Some(c) = t.strip_suffix('Z') {
        (c, 0)
    } else if let Some(pos) = t.rfind(['+', '-']) {
        let (c, z) = t.split_at(pos);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (zh, zm) = z[1..].split_once(':')?;
        let (zh, zm) = (i64::from(num(zh)?), i64::from(num(zm)?));
        (c, sign * (zh * 3_600_000 + zm * 60_000))
    } else {
        (t, 0)
    };
    let mut f = clock.split(':');
    let h = i64::from(num(f.next()?)?);
    let mi = i64::from(num(f.next()?)?);
    let (sec_ms, width) = match f.next() {
        None => (0, 60_000),
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let s = i64::from(num(whole)?);
            if frac.is_empty() {
                (s * 1000, 1000)
            } else {
                let digits: String = frac.chars().take(3).collect();
                let scale = 10i64.pow(3 - digits.len() as u32);
                let ms = i64::from(num(&digits)?) * scale;
                (s * 1000 + ms, if frac.len() >= 3 { 1 } else { scale })
            }
        }
    };
    if h > 24 || mi > 59 || sec_ms > 60_999 {
        return None;
    }
    Some((h * 3_600_000 + mi * 60_000 + sec_ms - zone_ms, width))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_cover_their_range() {
        let (lo, hi) = parse_range("2020").unwrap();
        assert_eq!(format_ms(lo), "2020-01-01T00:00:00.000Z");
        assert_eq!(format_ms(hi), "2021-01-01T00:00:00.000Z");
        let (lo, hi) = parse_range("2020-02").unwrap();
        assert_eq!(
            (format_ms(lo).as_str(), format_ms(hi).as_str()),
            ("2020-02-01T00:00:00.000Z", "2020-03-01T00:00:00.000Z")
        );
        let (lo, hi) = parse_range("1984-10-22T15:53:07+01:00").unwrap();
        assert_eq!(format_ms(lo), "1984-10-22T14:53:07.000Z");
        assert_eq!(hi - lo, 1000);
        let (lo, hi) = parse_range("2021-07-10T01:02:03.5Z").unwrap();
        assert_eq!(format_ms(lo), "2021-07-10T01:02:03.500Z");
        assert_eq!(hi - lo, 100);
        assert!(parse_range("2020-13").is_none());
        assert!(parse_range("2021-02-29").is_none());
        assert!(parse_range("20x0").is_none());
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
