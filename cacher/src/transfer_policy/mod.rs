//! Transfer policies of write-back uploads: when and how fast the office uploads to S3, and
//! in what order.
//!
//! - [`Schedule`]: the bandwidth timetable, e.g. `Mon-Fri 09:00-18:00 20MiB; Sat,Sun 10MiB;
//!   * off`, in the office's local time (grammar in [`schedule`]).
//! - [`TransferPolicy`]: a schedule plus priority globs; [`TransferPolicy::priority_of`] gives
//!   a key's priority (lower uploads first; the queue then goes oldest first).
//! - [`PolicyHandle`]: the office's policy in force, shared and replaceable at run time
//!   (`setTransferPolicy`); every throttled stream feels a change at once.
//! - [`UploadLimiter`] and [`Throttled`]: a token bucket over upload bytes, shared by all
//!   uploads of the office, and the stream wrapper the uploader puts around each upload body.
//! - [`DownloadSchedule`] and [`DownloadGate`]: the download windows that hold materializations
//!   scheduled with a deadline (`readyBy`), and their plans ([`downloads`]).
//! - [`PolicyShaper`]: all of it as the write-back path's
//!   [`UploadShaper`](crate::writeback::UploadShaper).
//!
//! # Priority globs
//!
//! Each pattern is matched against the **whole key** (not the file name alone). `*` matches
//! any run of characters **including `/`** (so `*.mcap` matches `drives/d1/log.mcap`, and
//! `drives/*` everything under `drives/`); `?` matches exactly one character (also `/`).
//! Every other character matches itself, case-sensitively. `[`, `]`, `{` and `}` are refused
//! rather than taken literally, because they usually mean a shell glob feature (classes,
//! alternatives) this syntax does not have: use one pattern per alternative instead. A key
//! matching no pattern gets the lowest priority (the number of patterns).
//!
//! ```
//! use milepost_cacher::transfer_policy::{PolicyHandle, TransferPolicy};
//!
//! let policy = TransferPolicy::parse(
//!     "Mon-Fri 09:00-18:00 20MiB; * off",
//!     &["*.json".to_owned(), "*.mcap".to_owned()],
//! )?;
//! assert_eq!(policy.priority_of("runs/r1/run.json"), 0);
//! assert_eq!(policy.priority_of("drives/d1/front.mp4"), 2);
//! let handle = PolicyHandle::new(policy);
//! handle.set(TransferPolicy::parse("* 10MiB", &[])?); // felt by every upload within 1 s
//! # Ok::<(), milepost_cacher::transfer_policy::PolicyError>(())
//! ```

pub mod downloads;
pub mod schedule;
mod shaper;
pub mod throttle;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::NaiveDateTime;
use tokio::sync::watch;

pub use downloads::{DownloadGate, DownloadPlan, DownloadSchedule, DownloadWindow};
pub use schedule::{format_rate, Schedule};
pub use shaper::PolicyShaper;
pub use throttle::{Throttled, UploadLimiter};

/// Most priority patterns a policy may have.
pub const MAX_PRIORITIES: usize = 100;
/// Longest priority pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 1024;

/// A schedule or priority pattern that cannot be used. Messages are lowercase and name the
/// input: the rule (1-based) and its token, or the pattern (0-based index, as in the list).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("schedule rule {rule} `{text}`: {}", describe_token(.token.as_deref(), .expected))]
    Schedule {
        /// 1-based position of the rule among the `;`-separated rules.
        rule: usize,
        /// The rule's text, trimmed.
        text: String,
        /// The offending token; `None` when the rule ended before it.
        token: Option<String>,
        /// What was expected instead.
        expected: String,
    },
    #[error("priority {index} `{pattern}`: {problem}")]
    Priority {
        /// 0-based position in the priority list.
        index: usize,
        pattern: String,
        problem: String,
    },
    #[error("{count} priorities given, expected at most {MAX_PRIORITIES}")]
    TooManyPriorities { count: usize },
}

fn describe_token(token: Option<&str>, expected: &str) -> String {
    match token {
        Some(token) => format!("unexpected `{token}`, expected {expected}"),
        None => format!("the rule ends early, expected {expected}"),
    }
}

/// What a caller can branch on; every policy error is the input's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyErrorKind {
    /// The upload schedule is malformed.
    Schedule,
    /// A priority pattern (or their number) is malformed.
    Priorities,
}

impl PolicyError {
    pub fn kind(&self) -> PolicyErrorKind {
        match self {
            PolicyError::Schedule { .. } => PolicyErrorKind::Schedule,
            PolicyError::Priority { .. } | PolicyError::TooManyPriorities { .. } => {
                PolicyErrorKind::Priorities
            }
        }
    }

    /// The index of the offending priority pattern, when one is.
    pub fn priority_index(&self) -> Option<usize> {
        match self {
            PolicyError::Priority { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// The transfer policy of an office: the bandwidth schedule and the priority globs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferPolicy {
    pub schedule: Schedule,
    /// Key globs in priority order: a key's priority is the index of the first that matches.
    pub priorities: Vec<String>,
}

impl Default for TransferPolicy {
    /// Unlimited; JSON records first, then MCAP logs, then the rest.
    fn default() -> Self {
        TransferPolicy {
            schedule: Schedule::unlimited(),
            priorities: vec!["*.json".to_owned(), "*.mcap".to_owned(), "*".to_owned()],
        }
    }
}

impl TransferPolicy {
    /// Parses the schedule and validates the priority globs (see the [module docs](self)).
    /// Patterns are kept as given, surrounding whitespace removed.
    pub fn parse(schedule: &str, priorities: &[String]) -> Result<TransferPolicy, PolicyError> {
        let schedule = Schedule::parse(schedule)?;
        if priorities.len() > MAX_PRIORITIES {
            return Err(PolicyError::TooManyPriorities {
                count: priorities.len(),
            });
        }
        let priorities = priorities
            .iter()
            .enumerate()
            .map(|(index, pattern)| validate_glob(index, pattern))
            .collect::<Result<_, _>>()?;
        Ok(TransferPolicy {
            schedule,
            priorities,
        })
    }

    /// The priority of `key`: the index of the first matching glob, or the number of globs
    /// when none matches. Lower uploads first.
    pub fn priority_of(&self, key: &str) -> i32 {
        let index = self
            .priorities
            .iter()
            .position(|glob| glob_matches(glob, key))
            .unwrap_or(self.priorities.len());
        i32::try_from(index).unwrap_or(i32::MAX)
    }
}

impl fmt::Display for TransferPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schedule `{}`, priorities [{}]",
            self.schedule,
            self.priorities.join(", ")
        )
    }
}

fn validate_glob(index: usize, pattern: &str) -> Result<String, PolicyError> {
    let error = |problem: &str| PolicyError::Priority {
        index,
        pattern: pattern.to_owned(),
        problem: problem.to_owned(),
    };
    let trimmed = pattern.trim();
    if trimmed.is_empty() {
        return Err(error(
            "expected a key glob such as *.mcap, got an empty pattern",
        ));
    }
    if trimmed.len() > MAX_PATTERN_LEN {
        return Err(error("expected a key glob of at most 1024 bytes"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(error("expected a key glob without control characters"));
    }
    if trimmed.contains(['[', ']', '{', '}']) {
        return Err(error(
            "expected `*` and `?` wildcards only: `[...]` classes and `{a,b}` alternatives are not supported, give one pattern per alternative",
        ));
    }
    Ok(trimmed.to_owned())
}

/// Whether `key` matches `glob` as a whole: `*` is any run of characters (`/` included), `?`
/// exactly one character. Linear backtracking over the last `*`, so no pattern is exponential.
pub fn glob_matches(glob: &str, key: &str) -> bool {
    let pattern: Vec<char> = glob.chars().collect();
    let text: Vec<char> = key.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was and the text position it currently stands for.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some('?') => {
                p += 1;
                t += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// The office's local wall-clock time, for evaluating schedules.
pub type Clock = Arc<dyn Fn() -> NaiveDateTime + Send + Sync>;

/// The transfer policy in force, shared by the API (which replaces it) and the uploads (which
/// read it). Replacing it wakes every [`UploadLimiter`] waiter, so a change is felt at once.
pub struct PolicyHandle {
    sender: watch::Sender<Arc<TransferPolicy>>,
    generation: AtomicU64,
    clock: Clock,
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("policy", &*self.current())
            .finish_non_exhaustive()
    }
}

impl PolicyHandle {
    /// A handle evaluating schedules in the process's local time zone (`chrono::Local`).
    pub fn new(policy: TransferPolicy) -> Arc<PolicyHandle> {
        PolicyHandle::with_clock(policy, Arc::new(|| chrono::Local::now().naive_local()))
    }

    /// A handle whose "now" in office local time comes from `clock` (tests, other zones).
    pub fn with_clock(policy: TransferPolicy, clock: Clock) -> Arc<PolicyHandle> {
        let (sender, _) = watch::channel(Arc::new(policy));
        Arc::new(PolicyHandle {
            sender,
            generation: AtomicU64::new(0),
            clock,
        })
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<TransferPolicy> {
        self.sender.borrow().clone()
    }

    /// Replaces the policy; every throttled stream uses the new one at once.
    pub fn set(&self, policy: TransferPolicy) {
        self.sender.send_replace(Arc::new(policy));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A receiver notified whenever [`set`](Self::set) replaces the policy.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TransferPolicy>> {
        self.sender.subscribe()
    }

    /// The office's local time now.
    pub fn local_now(&self) -> NaiveDateTime {
        (self.clock)()
    }

    /// The upload limit in bytes per second now; `None` = unlimited.
    pub fn limit_now(&self) -> Option<u64> {
        self.current().schedule.rate_at(self.local_now())
    }

    /// Bumped by every [`set`](Self::set); lets the limiter notice a change cheaply.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn first_matching_glob_wins_and_unmatched_keys_go_last() {
        let policy = TransferPolicy::parse("* off", &strings(&["*.json", "drives/*", "*.mcap"]))
            .expect("valid");
        assert_eq!(policy.priority_of("runs/r1/run.json"), 0);
        assert_eq!(policy.priority_of("drives/d1/drive.json"), 0);
        assert_eq!(policy.priority_of("drives/d1/log.mcap"), 1);
        assert_eq!(policy.priority_of("runs/r1/log.mcap"), 2);
        assert_eq!(policy.priority_of("runs/r1/video.mp4"), 3);
        let none = TransferPolicy::parse("* off", &[]).expect("valid");
        assert_eq!(none.priority_of("anything"), 0);
    }

    #[test]
    fn globs_match_the_whole_key_with_star_across_slashes() {
        assert!(glob_matches("*.mcap", "drives/2026-01-01/v/d/log.mcap"));
        assert!(!glob_matches("*.mcap", "drives/log.mcap.tmp"));
        assert!(glob_matches(
            "drives/*/camera/*",
            "drives/x/y/camera/front/0001.jpg"
        ));
        assert!(
            !glob_matches("camera/*", "drives/x/camera/f.jpg"),
            "anchored at the start"
        );
        assert!(glob_matches("*camera/*", "drives/x/camera/f.jpg"));
        assert!(glob_matches("run?.json", "run1.json"));
        assert!(glob_matches("a?b", "a/b"), "? matches a slash too");
        assert!(!glob_matches("run?.json", "run.json"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("**", "a/b/c"));
        assert!(!glob_matches("", "a"));
        assert!(glob_matches("é?", "éü"), "characters, not bytes");
        assert!(glob_matches("*a*a*a*a*b", "xaxaxaxaxb"));
        assert!(!glob_matches("*a*a*a*a*a*c", &"a".repeat(5000)));
    }

    #[test]
    fn bad_globs_name_the_pattern_and_index() {
        let err = TransferPolicy::parse("* off", &strings(&["*.json", " "])).expect_err("invalid");
        assert_eq!(err.priority_index(), Some(1));
        assert_eq!(err.kind(), PolicyErrorKind::Priorities);
        assert!(
            err.to_string().starts_with("priority 1 ` `: expected"),
            "{err}"
        );
        let err =
            TransferPolicy::parse("* off", &strings(&["*.{json,yaml}"])).expect_err("invalid");
        assert!(
            err.to_string().contains("`*.{json,yaml}`") && err.to_string().contains("alternatives"),
            "{err}"
        );
        let many = vec!["*".to_owned(); MAX_PRIORITIES + 1];
        let err = TransferPolicy::parse("* off", &many).expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "101 priorities given, expected at most 100"
        );
        let err = TransferPolicy::parse("Mon-Fry 1MiB", &[]).expect_err("invalid");
        assert_eq!(err.kind(), PolicyErrorKind::Schedule);
        assert_eq!(err.priority_index(), None);
    }

    #[test]
    fn patterns_are_trimmed() {
        let policy = TransferPolicy::parse("* off", &strings(&[" *.json "])).expect("valid");
        assert_eq!(policy.priorities, vec!["*.json"]);
    }

    #[test]
    fn handle_replaces_the_policy_and_notifies_subscribers() {
        let at = |h, m| {
            chrono::NaiveDate::from_ymd_opt(2026, 11, 25) // a Wednesday
                .expect("valid")
                .and_hms_opt(h, m, 0)
                .expect("valid")
        };
        let handle = PolicyHandle::with_clock(
            TransferPolicy::parse("Mon-Fri 09:00-18:00 20MiB; * off", &[]).expect("valid"),
            Arc::new(move || at(10, 0)),
        );
        assert_eq!(handle.limit_now(), Some(20 << 20));
        let mut changes = handle.subscribe();
        let before = handle.generation();
        handle.set(TransferPolicy::parse("* 1MiB", &strings(&["*"])).expect("valid"));
        assert!(changes.has_changed().expect("valid"));
        assert_eq!(changes.borrow_and_update().schedule.to_string(), "* 1MiB");
        assert_eq!(handle.current().priorities, vec!["*"]);
        assert_eq!(handle.limit_now(), Some(1 << 20));
        assert!(handle.generation() > before);
    }

    /// A plain recursive matcher: the reference the fast one must agree with.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some(('?', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some((c, rest)) => text.first() == Some(c) && reference(rest, &text[1..]),
        }
    }

    proptest! {
        #[test]
        fn glob_matching_agrees_with_the_reference(
            pattern in "[ab*?/]{0,8}",
            key in "[ab/]{0,10}",
        ) {
            let p: Vec<char> = pattern.chars().collect();
            let k: Vec<char> = key.chars().collect();
            prop_assert_eq!(glob_matches(&pattern, &key), reference(&p, &k));
        }

        #[test]
        fn a_key_always_matches_itself_and_star(key in "[a-z0-9/._-]{0,40}") {
            prop_assert!(glob_matches(&key, &key));
            prop_assert!(glob_matches("*", &key));
        }
    }
}
