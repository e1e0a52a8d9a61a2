//! The upload bandwidth schedule: a weekly timetable of rates in the office's local time.
//!
//! # Grammar
//!
//! ```text
//! schedule = rule *( ";" rule )            ; at least one rule; a trailing ";" is allowed
//! rule     = days [ window ] rate          ; tokens separated by spaces
//! days     = "*" | day-set *( "," day-set )
//! day-set  = day | day "-" day             ; a range, e.g. Mon-Fri; Fri-Mon wraps over Sunday
//! day      = "Mon" | "Tue" | "Wed" | "Thu" | "Fri" | "Sat" | "Sun"   ; any letter case
//! window   = HH:MM "-" HH:MM               ; start inclusive, end exclusive; end may be 24:00
//! rate     = "off" | size [ "/s" ]         ; off = unlimited
//! size     = number [ unit ]               ; 20MiB, 512KiB, 1.5GiB, 1000000 (bytes), 10MB
//! unit     = B | KiB | MiB | GiB | TiB | kB | KB | MB | GB | TB
//! ```
//!
//! Example: `Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB; * off` holds uploads to 20 MiB/s on
//! weekdays from 9 to 18, to 10 MiB/s all weekend, and leaves them unlimited otherwise.
//!
//! - **First matching rule wins**; a time no rule matches is unlimited, so `* off` at the end
//!   only documents the default.
//! - **No window = the whole day.** `00:00-24:00` is the same as no window.
//! - **A window may wrap midnight**: `Fri 22:00-06:00 5MiB` runs from Friday 22:00 to Saturday
//!   06:00, i.e. the part after midnight belongs to the day the window *starts* on. A window
//!   whose start equals its end is refused (omit the window for a whole day).
//! - Times have minute precision and are the office's local wall-clock time (the process time
//!   zone, `TZ`); the evaluation itself is pure: [`Schedule::rate_at`] takes the time.
//! - A rate is bytes per second; zero is refused (there is no "pause"), `off` is unlimited.
//!
//! [`Schedule`]'s `Display` prints the canonical text (`Mon-Fri 09:00-18:00 20MiB; Sat,Sun
//! 10MiB; * off`), which parses back to the same schedule.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, Duration, NaiveDateTime, Timelike};

use super::PolicyError;

const MINUTES_PER_DAY: u32 = 24 * 60;
const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

const DAYS_EXPECTED: &str =
    "days: `*`, a day (Mon..Sun), a range such as Mon-Fri, or a list such as Sat,Sun";
const WINDOW_EXPECTED: &str = "a time window HH:MM-HH:MM (e.g. 09:00-18:00) or a rate";
const RATE_EXPECTED: &str =
    "a rate per second such as 20MiB, 512KiB, 1.5GiB or 1000000 (bytes), or off (unlimited)";

/// Units of a rate, longest suffix first so that `MiB` is not read as `B`.
const RATE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
    ("kB", 1_000),
    ("B", 1),
];

/// A set of weekdays: bit 0 is Monday, bit 6 Sunday. Never empty once parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Days(u8);

impl Days {
    pub const ALL: Days = Days(0x7f);

    /// Whether the day `index` (0 = Monday .. 6 = Sunday) is in the set.
    pub fn contains(self, index: u32) -> bool {
        index < 7 && self.0 & (1 << index) != 0
    }

    fn parse(token: &str) -> Option<Days> {
        if token == "*" {
            return Some(Days::ALL);
        }
        let mut bits = 0u8;
        for item in token.split(',') {
            match item.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (day_index(from)?, day_index(to)?);
                    let mut day = from;
                    loop {
                        bits |= 1 << day;
                        if day == to {
                            break;
                        }
                        day = (day + 1) % 7;
                    }
                }
                None => bits |= 1 << day_index(item)?,
            }
        }
        Some(Days(bits))
    }
}

impl fmt::Display for Days {
    /// `*` for every day, else runs in Monday-first order: three or more days as a range
    /// (`Mon-Fri`), shorter runs as single days (`Sat,Sun`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Days::ALL {
            return f.write_str("*");
        }
        let mut parts = Vec::new();
        let mut day = 0;
        while day < 7 {
            if !self.contains(day) {
                day += 1;
                continue;
            }
            let start = day;
            while day + 1 < 7 && self.contains(day + 1) {
                day += 1;
            }
            if day - start >= 2 {
                parts.push(format!(
                    "{}-{}",
                    DAY_NAMES[start as usize], DAY_NAMES[day as usize]
                ));
            } else {
                parts.extend((start..=day).map(|d| DAY_NAMES[d as usize].to_owned()));
            }
            day += 1;
        }
        f.write_str(&parts.join(","))
    }
}

fn day_index(name: &str) -> Option<u32> {
    DAY_NAMES
        .iter()
        .position(|d| d.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// A time window in minutes of the day: `start` inclusive, `end` exclusive (at most 1440).
/// `end < start` wraps midnight into the next day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Window {
    start: u32,
    end: u32,
}

impl Window {
    /// First minute of the day the window covers (0..1440).
    pub fn start_minute(self) -> u32 {
        self.start
    }

    /// Minute of the day the window ends at, exclusive (1..=1440).
    pub fn end_minute(self) -> u32 {
        self.end
    }

    /// Whether the window runs past midnight into the next day.
    pub fn wraps(self) -> bool {
        self.end < self.start
    }

    /// `None` for a token that is not `HH:MM-HH:MM`; `Some(Err)` for one that is shaped like
    /// a window but is not a valid one.
    fn parse(token: &str) -> Option<Result<Option<Window>, &'static str>> {
        let (from, to) = token.split_once('-')?;
        let start = parse_clock(from)?;
        let end = parse_clock(to)?;
        Some(match (start, end) {
            (Err(e), _) | (_, Err(e)) => Err(e),
            (Ok(1440), _) => Err("a window cannot start at 24:00"),
            (Ok(start), Ok(end)) if start == end => Err(
                "a window whose start and end are the same is empty; omit the window for the whole day",
            ),
            // The whole day is written without a window.
            (Ok(0), Ok(1440)) => Ok(None),
            // Until midnight.
            (Ok(start), Ok(0)) => Ok(Some(Window { start, end: 1440 })),
            (Ok(start), Ok(end)) => Ok(Some(Window { start, end })),
        })
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// `HH:MM` (one or two hour digits, `24:00` allowed) in minutes of the day. `None` when the
/// text is not clock-shaped at all, `Some(Err)` when it is but is out of range.
fn parse_clock(text: &str) -> Option<Result<u32, &'static str>> {
    let (h, m) = text.split_once(':')?;
    let digits = |s: &str, max_len| {
        !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    Some(match (h, m) {
        (24, 0) => Ok(1440),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err("times run from 00:00 to 24:00"),
    })
}

/// A rate in bytes per second; `None` is unlimited (`off`).
fn parse_rate(token: &str) -> Result<Option<u64>, &'static str> {
    if token.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let text = token.strip_suffix("/s").unwrap_or(token);
    let (number, multiplier) = RATE_UNITS
        .iter()
        .find_map(|(unit, mult)| text.strip_suffix(unit).map(|n| (n, *mult)))
        .unwrap_or((text, 1));
    let well_formed = !number.is_empty()
        && number.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && number.bytes().filter(|b| *b == b'.').count() <= 1
        && !number.starts_with('.')
        && !number.ends_with('.');
    if !well_formed {
        return Err(RATE_EXPECTED);
    }
    let bytes = if let Ok(whole) = number.parse::<u64>() {
        whole.checked_mul(multiplier).ok_or(RATE_EXPECTED)?
    } else {
        let value: f64 = number.parse().map_err(|_| RATE_EXPECTED)?;
        let bytes = (value * multiplier as f64).round();
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(RATE_EXPECTED);
        }
        bytes as u64
    };
    if bytes == 0 {
        return Err("a rate above zero such as 20MiB, or off (unlimited); zero would stop uploads");
    }
    Ok(Some(bytes))
}

/// A rate as the canonical text: the largest binary unit that divides it exactly, else bytes.
pub fn format_rate(rate: Option<u64>) -> String {
    let Some(bytes) = rate else {
        return "off".to_owned();
    };
    for (unit, mult) in RATE_UNITS.iter().take(4) {
        if bytes >= *mult && bytes % mult == 0 {
            return format!("{}{unit}", bytes / mult);
        }
    }
    format!("{bytes}B")
}

/// One rule of a schedule.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    days: Days,
    window: Option<Window>,
    rate: Option<u64>,
}

impl Rule {
    pub fn days(&self) -> Days {
        self.days
    }

    /// `None` for the whole day.
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// Bytes per second; `None` = unlimited.
    pub fn rate(&self) -> Option<u64> {
        self.rate
    }

    /// Whether the rule covers `minute` (of the day) on `day` (0 = Monday).
    fn matches(&self, day: u32, minute: u32) -> bool {
        match self.window {
            None => self.days.contains(day),
            Some(w) if !w.wraps() => self.days.contains(day) && (w.start..w.end).contains(&minute),
            Some(w) => {
                (self.days.contains(day) && minute >= w.start)
                    || (self.days.contains((day + 6) % 7) && minute < w.end)
            }
        }
    }

    /// Minutes of the week (0 = Monday 00:00) at which this rule starts or stops matching.
    fn boundaries(&self, out: &mut Vec<u32>) {
        const WEEK: u32 = 7 * MINUTES_PER_DAY;
        for day in (0..7).filter(|d| self.days.contains(*d)) {
            let base = day * MINUTES_PER_DAY;
            match self.window {
                None => out.extend([base, (base + MINUTES_PER_DAY) % WEEK]),
                Some(w) if !w.wraps() => out.extend([base + w.start, (base + w.end) % WEEK]),
                Some(w) => out.extend([base + w.start, (base + MINUTES_PER_DAY + w.end) % WEEK]),
            }
        }
    }

    fn parse(text: &str, number: usize) -> Result<Rule, PolicyError> {
        let error = |token: Option<&str>, expected: &str| PolicyError::Schedule {
            rule: number,
            text: text.to_owned(),
            token: token.map(str::to_owned),
            expected: expected.to_owned(),
        };
        let mut tokens = text.split_whitespace();
        let days_token = tokens.next().ok_or_else(|| error(None, DAYS_EXPECTED))?;
        let days = Days::parse(days_token).ok_or_else(|| error(Some(days_token), DAYS_EXPECTED))?;
        let next = tokens.next().ok_or_else(|| error(None, WINDOW_EXPECTED))?;
        let (window, rate_token) = match Window::parse(next) {
            Some(Ok(window)) => {
                let rate = tokens.next().ok_or_else(|| error(None, RATE_EXPECTED))?;
                (window, rate)
            }
            Some(Err(problem)) => return Err(error(Some(next), problem)),
            None => (None, next),
        };
        let rate = parse_rate(rate_token).map_err(|expected| {
            // A token with a colon is a window gone wrong more likely than a rate.
            if rate_token.contains(':') && window.is_none() {
                error(Some(rate_token), WINDOW_EXPECTED)
            } else {
                error(Some(rate_token), expected)
            }
        })?;
        if let Some(extra) = tokens.next() {
            return Err(error(
                Some(extra),
                "the end of the rule after the rate (separate rules with `;`)",
            ));
        }
        Ok(Rule { days, window, rate })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.days)?;
        if let Some(window) = self.window {
            write!(f, " {window}")?;
        }
        write!(f, " {}", format_rate(self.rate))
    }
}

/// A parsed upload schedule (see the [module docs](self) for the grammar).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Schedule {
    rules: Vec<Rule>,
}

impl Schedule {
    /// Parses the grammar of the [module docs](self); errors name the rule (1-based), the
    /// token and what was expected there.
    pub fn parse(text: &str) -> Result<Schedule, PolicyError> {
        let mut rules = Vec::new();
        let parts: Vec<&str> = text.split(';').collect();
        for (i, part) in parts.iter().enumerate() {
            let trimmed = part.trim();
            // A trailing `;` leaves an empty last part; an empty rule elsewhere is a typo.
            if trimmed.is_empty() && i + 1 == parts.len() && i > 0 {
                continue;
            }
            rules.push(Rule::parse(trimmed, i + 1)?);
        }
        Ok(Schedule { rules })
    }

    /// Unlimited at all times (`* off`).
    pub fn unlimited() -> Schedule {
        Schedule {
            rules: vec![Rule {
                days: Days::ALL,
                window: None,
                rate: None,
            }],
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The limit in bytes per second at local time `local`; `None` = unlimited. The first
    /// matching rule decides; no matching rule means unlimited.
    pub fn rate_at(&self, local: NaiveDateTime) -> Option<u64> {
        self.rule_at(local).and_then(|rule| rule.rate)
    }

    /// The rule in force at local time `local`: the first that matches, or `None` when no
    /// rule does.
    pub fn rule_at(&self, local: NaiveDateTime) -> Option<&Rule> {
        let day = local.weekday().num_days_from_monday();
        let minute = local.hour() * 60 + local.minute();
        self.rules.iter().find(|rule| rule.matches(day, minute))
    }

    /// The first time after `local` at which [`rate_at`](Self::rate_at) gives another rate,
    /// or `None` when the rate never changes. Changes fall on whole minutes.
    pub fn next_change_after(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let current = self.rate_at(local);
        self.boundaries_after(local)
            .into_iter()
            .find(|at| self.rate_at(*at) != current)
    }

    /// The first time after `local` at which [`rule_at`](Self::rule_at) gives another rule
    /// (or starts or stops giving one), or `None` when it never does.
    pub fn next_rule_change_after(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let current = self.rule_at(local);
        self.boundaries_after(local)
            .into_iter()
            .find(|at| self.rule_at(*at) != current)
    }

    /// Every time within the week after `local` at which some rule starts or stops
    /// matching, in order.
    fn boundaries_after(&self, local: NaiveDateTime) -> Vec<NaiveDateTime> {
        let mut minutes = Vec::new();
        for rule in &self.rules {
            rule.boundaries(&mut minutes);
        }
        minutes.sort_unstable();
        minutes.dedup();
        let Some(week_start) = local
            .date()
            .checked_sub_signed(Duration::days(i64::from(
                local.weekday().num_days_from_monday(),
            )))
            .and_then(|monday| monday.and_hms_opt(0, 0, 0))
        else {
            return Vec::new();
        };
        let mut candidates: Vec<NaiveDateTime> = minutes
            .into_iter()
            .filter_map(|m| {
                let at = week_start.checked_add_signed(Duration::minutes(i64::from(m)))?;
                if at > local {
                    Some(at)
                } else {
                    at.checked_add_signed(Duration::days(7))
                }
            })
            .collect();
        candidates.sort_unstable();
        candidates
    }
}

impl FromStr for Schedule {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Schedule::parse(text)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{rule}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
