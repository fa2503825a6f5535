//! Calendar dates in a time zone, as the stats and requests filters take
//! them: `from` and `to` are whole local days, both inclusive, and `DAY`
//! buckets are local days.
//!
//! SQLite knows no time zones, so the database never converts one. The
//! server turns the local range into UTC instants, and a zone's UTC offsets
//! into a table of `(since, offset)` pairs that the SQL picks from (see
//! [`Offsets`]). PostgreSQL gets the same expression, so both answer alike.

use chrono::{DateTime, Days, NaiveDate, Offset, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{ApiError, FieldErrors};

/// A date range in a time zone, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Period {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub zone: Tz,
}

/// Where the offset table starts when the range has no `from`: timestamps
/// before it are bucketed with the offset in force then. modelfleet keeps
/// no data older than its first run.
const EARLIEST: i64 = 946_684_800; // 2000-01-01T00:00:00Z

impl Default for Period {
    fn default() -> Self {
        Period {
            from: None,
            to: None,
            zone: Tz::UTC,
        }
    }
}

impl Period {
    /// Parses the filter's fields, reporting every bad one by name.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        time_zone: Option<&str>,
    ) -> Result<Self, ApiError> {
        let mut errors = FieldErrors::new();
        let mut date = |field: &str, value: Option<&str>| {
            let value = value?;
            match NaiveDate::parse_from_str(value, "%Y-%m-%d") {
                Ok(d) if value.len() == 10 => Some(d),
                _ => {
                    errors.insert(
                        field.to_owned(),
                        vec![format!("must be a date as YYYY-MM-DD, not {value:?}")],
                    );
                    None
                }
            }
        };
        let from_date = date("from", from);
        let to_date = date("to", to);
        let zone = match time_zone {
            None => Some(Tz::UTC),
            Some(name) => match name.parse::<Tz>() {
                Ok(zone) => Some(zone),
                Err(_) => {
                    errors.insert(
                        "timeZone".to_owned(),
                        vec![format!(
                            "must be an IANA time zone name such as Europe/Paris, not {name:?}"
                        )],
                    );
                    None
                }
            },
        };
        if let (Some(f), Some(t)) = (from_date, to_date)
            && f > t
        {
            errors.insert(
                "from".to_owned(),
                vec![format!("must not be after to ({f} is after {t})")],
            );
        }
        if !errors.is_empty() {
            return Err(ApiError::BadUserInput(errors));
        }
        Ok(Period {
            from: from_date,
            to: to_date,
            zone: zone.unwrap_or(Tz::UTC),
        })
    }

    /// The first instant of `from`, local midnight (or the first instant
    /// after it, on a day that starts inside a DST gap).
    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.from.map(|d| day_start(self.zone, d))
    }

    /// The first instant after `to`: the start of the next local day.
    pub fn end(&self) -> Option<DateTime<Utc>> {
        self.to
            .and_then(|d| d.checked_add_days(Days::new(1)))
            .map(|d| day_start(self.zone, d))
    }

    /// The zone's UTC offsets over the range, within 2000 to a year from
    /// now.
    /// No data lies outside that span, so a wider range is cut to it.
    pub fn offsets(&self) -> Offsets {
        let latest = (Utc::now() + TimeDelta::days(366)).timestamp();
        let lo = self
            .start()
            .map_or(EARLIEST, |t| t.timestamp())
            .clamp(EARLIEST, latest);
        let hi = self
            .end()
            .map_or(latest, |t| t.timestamp())
            .clamp(lo, latest);
        Offsets::of(self.zone, lo, hi)
    }

    /// The range as a file name part: `2026-11-01_2026-11-30`, `from-…`,
    /// `to-…` or `all-time`.
    pub fn label(&self) -> String {
        match (self.from, self.to) {
            (Some(f), Some(t)) => format!("{f}_{t}"),
            (Some(f), None) => format!("from-{f}"),
            (None, Some(t)) => format!("to-{t}"),
            (None, None) => "all-time".to_owned(),
        }
    }
}

fn day_start(zone: Tz, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    // Walk forward through a gap (a zone that skips midnight) in steps of a
    // quarter hour, the finest granularity of any offset change in use.
    let mut local = midnight;
    for _ in 0..=8 {
        if let Some(t) = zone.from_local_datetime(&local).earliest() {
            return t.with_timezone(&Utc);
        }
        local += TimeDelta::minutes(15);
    }
    Utc.from_utc_datetime(&midnight)
}

/// A zone's UTC offsets over a span: `(since, seconds east of UTC)`, the
/// first one in force from the start of the span, sorted by `since`
/// (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsets(pub Vec<(i64, i32)>);

impl Offsets {
    pub fn of(zone: Tz, lo: i64, hi: i64) -> Self {
        let at = |t: i64| {
            zone.offset_from_utc_datetime(
                &DateTime::from_timestamp(t, 0)
                    .unwrap_or_default()
                    .naive_utc(),
            )
            .fix()
            .local_minus_utc()
        };
        let mut out = vec![(lo, at(lo))];
        // Zones change offset at most a few times a year; a daily step finds
        // every change and a bisection its exact second.
        const DAY: i64 = 86_400;
        let mut t = lo;
        while t < hi {
            let next = (t + DAY).min(hi);
            let (before, after) = (at(t), at(next));
            if before != after {
                let (mut a, mut b) = (t, next);
                while b - a > 1 {
                    let mid = a + (b - a) / 2;
                    if at(mid) == before { a = mid } else { b = mid }
                }
                out.push((b, after));
            }
            t = next;
        }
        Offsets(out)
    }

    /// The offset in force at `t`.
    pub fn at(&self, t: i64) -> i32 {
        match self.0.partition_point(|&(since, _)| since <= t) {
            0 => self.0.first().map_or(0, |&(_, o)| o),
            i => self.0[i - 1].1,
        }
    }

    /// A SQL expression for the offset at `epoch` (an integer expression):
    /// a constant for a fixed zone, otherwise a balanced tree of `CASE`s, so
    /// each row takes a handful of comparisons whatever the span.
    pub fn sql(&self, epoch: &str) -> String {
        fn tree(epoch: &str, spans: &[(i64, i32)]) -> String {
            match spans {
                [] => "0".to_owned(),
                [(_, offset)] => offset.to_string(),
                _ => {
                    let mid = spans.len() / 2;
                    format!(
                        "CASE WHEN {epoch} < {} THEN {} ELSE {} END",
                        spans[mid].0,
                        tree(epoch, &spans[..mid]),
                        tree(epoch, &spans[mid..])
                    )
                }
            }
        }
        tree(epoch, &self.0)
    }
}

/// The local date of Unix day number `n` (days since 1970-01-01).
pub fn day_from_number(n: i64) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(TimeDelta::try_days(n)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(e: ApiError) -> Vec<String> {
        match e {
            ApiError::BadUserInput(f) => f.into_keys().collect(),
            other => panic!("expected bad input, got {other:?}"),
        }
    }

    #[test]
    fn bad_input_names_each_field() {
        let e = Period::parse(Some("2026-13-01"), Some("tomorrow"), Some("Mars/Olympus"));
        assert_eq!(fields(e.expect_err("refused")), ["from", "timeZone", "to"]);
        let e = Period::parse(Some("2026-12-05"), Some("2026-12-04"), None);
        assert_eq!(fields(e.expect_err("refused")), ["from"]);
        // Only the strict form: no single-digit months.
        assert!(Period::parse(Some("2026-1-05"), None, None).is_err());
    }

    #[test]
    fn range_follows_the_zone() {
        let p = Period::parse(Some("2026-07-01"), Some("2026-07-01"), Some("Europe/Paris"))
            .expect("valid");
        assert_eq!(
            p.start().expect("start").to_rfc3339(),
            "2026-06-30T22:00:00+00:00"
        );
        assert_eq!(
            p.end().expect("end").to_rfc3339(),
            "2026-07-01T22:00:00+00:00"
        );
        let p = Period::parse(Some("2026-01-01"), None, Some("Asia/Kolkata")).expect("valid");
        assert_eq!(
            p.start().expect("start").to_rfc3339(),
            "2025-12-31T18:30:00+00:00"
        );
        assert_eq!(p.label(), "from-2026-01-01");
    }

    #[test]
    fn offsets_find_each_transition_to_the_second() {
        let zone: Tz = "America/New_York".parse().expect("zone");
        let lo = Utc
            .with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp();
        let hi = Utc
            .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
            .unwrap()
            .timestamp();
        let offsets = Offsets::of(zone, lo, hi);
        // EST, then EDT from 8 March 07:00 UTC, then EST from 1 November 06:00 UTC.
        let spring = Utc
            .with_ymd_and_hms(2026, 3, 8, 7, 0, 0)
            .unwrap()
            .timestamp();
        let autumn = Utc
            .with_ymd_and_hms(2026, 11, 1, 6, 0, 0)
            .unwrap()
            .timestamp();
        assert_eq!(
            offsets.0,
            vec![(lo, -5 * 3600), (spring, -4 * 3600), (autumn, -5 * 3600)]
        );
        assert_eq!(offsets.at(spring - 1), -5 * 3600);
        assert_eq!(offsets.at(spring), -4 * 3600);
        let sql = offsets.sql("e");
        assert!(sql.starts_with("CASE WHEN e < "), "{sql}");
        assert_eq!(Offsets::of(Tz::UTC, lo, hi).sql("e"), "0");
    }

    #[test]
    fn offsets_of_a_huge_range_stay_within_the_data() {
        let p = Period::parse(Some("0001-01-01"), Some("9999-12-31"), Some("Europe/Paris"))
            .expect("valid");
        let offsets = p.offsets();
        // 2000 to a year from now: two changes a year.
        assert!(offsets.0.len() < 2 * 30 + 2, "{}", offsets.0.len());
        assert_eq!(offsets.0[0].0, EARLIEST);
    }

    #[test]
    fn day_numbers_are_unix_days() {
        assert_eq!(day_from_number(0), NaiveDate::from_ymd_opt(1970, 1, 1));
        assert_eq!(
            day_from_number(20_791),
            NaiveDate::from_ymd_opt(2026, 12, 4)
        );
    }
}
