//! Talking to Slurm through its own commands (`sbatch`, `scontrol`, `scancel`, `sinfo`), as a user on a
//! login node does. Job states come from `scontrol show job`, which works without slurmdbd accounting
//! (`sacct` needs it); a finished job stays visible there for the cluster's MinJobAge.
use std::path::Path;
use std::process::Command;

/// The Slurm client commands, optionally run under a prefix (`MMB_SLURM_WRAP`, e.g. `nsenter --net=…`
/// for a test cluster in its own network namespace).
#[derive(Debug, Clone, Default)]
pub struct SlurmClient {
    pub wrap: Vec<String>,
}

/// One job, or one task (or a still-pending range of tasks) of an array job, as `scontrol` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskState {
    pub job_id: String,
    /// The array indexes this record stands for (one for a started task, a range while pending; empty
    /// for a job that is not an array).
    pub indexes: Vec<usize>,
    pub state: String,
    pub reason: String,
    pub exit_code: String,
    pub stdout: String,
}

impl TaskState {
    /// Still queued or running: worth waiting for.
    pub fn is_active(&self) -> bool {
        let waiting = matches!(
            self.state.as_str(),
            "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING" | "REQUEUED" | "RESIZING" | "SUSPENDED" | "SIGNALING" | "STAGE_OUT"
        );
        waiting && !self.is_stuck()
    }

    /// Pending for a reason that never clears by itself (a hold, a dependency that can never be met).
    pub fn is_stuck(&self) -> bool {
        self.state == "PENDING"
            && (self.reason.contains("Held")
                || self.reason.contains("held")
                || self.reason.contains("DependencyNeverSatisfied")
                || self.reason.contains("BadConstraints")
                || self.reason.contains("PartitionDown")
                || self.reason.contains("InvalidAccount")
                || self.reason.contains("InvalidQOS"))
    }

    pub fn describe(&self) -> String {
        let mut s = self.state.clone();
        if self.exit_code != "0:0" && !self.exit_code.is_empty() {
            s.push_str(&format!(", exit {}", self.exit_code));
        }
        if !self.reason.is_empty() && self.reason != "None" {
            s.push_str(&format!(", {}", self.reason));
        }
        s
    }
}

impl SlurmClient {
    /// The prefix from `MMB_SLURM_WRAP` (split on whitespace) when set, else `wrap`.
    pub fn new(wrap: &[String]) -> Self {
        match std::env::var("MMB_SLURM_WRAP") {
            Ok(w) if !w.trim().is_empty() => Self { wrap: w.split_whitespace().map(String::from).collect() },
            _ => Self { wrap: wrap.to_vec() },
        }
    }

    fn command(&self, program: &str) -> Command {
        match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn output(&self, program: &str, args: &[String]) -> anyhow::Result<std::process::Output> {
        let mut c = self.command(program);
        c.args(args);
        c.output().map_err(|e| {
            anyhow::anyhow!(
                "could not run `{program}` ({e}): is this a Slurm login node (slurm-client installed, on PATH)?{}",
                self.wrap_note()
            )
        })
    }

    fn wrap_note(&self) -> String {
        if self.wrap.is_empty() {
            String::new()
        } else {
            format!(" (run under `{}`)", self.wrap.join(" "))
        }
    }

    /// Checks that a controller answers (`sinfo`).
    pub fn ping(&self) -> anyhow::Result<String> {
        let out = self.output("sinfo", &["-h".into(), "-o".into(), "%P %a %D %T".into()])?;
        if !out.status.success() {
            anyhow::bail!("no Slurm controller answers `sinfo`{}: {}", self.wrap_note(), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `sbatch --parsable ARGS SCRIPT`: the job id.
    pub fn submit(&self, args: &[String], script: &Path) -> anyhow::Result<String> {
        let mut all = vec!["--parsable".to_string()];
        all.extend(args.iter().cloned());
        all.push(script.to_string_lossy().into_owned());
        let out = self.output("sbatch", &all)?;
        if !out.status.success() {
            anyhow::bail!("sbatch {} failed: {}", all.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        // `--parsable` prints `jobid` or `jobid;cluster`.
        let id = text.trim().split(';').next().unwrap_or("").to_string();
        anyhow::ensure!(!id.is_empty() && id.chars().all(|c| c.is_ascii_digit()), "sbatch printed no job id: {text:?}");
        Ok(id)
    }

    /// Every task of a job; None when Slurm no longer knows the job (it finished longer ago than MinJobAge).
    pub fn tasks(&self, job: &str) -> anyhow::Result<Option<Vec<TaskState>>> {
        let out = self.output("scontrol", &["show".into(), "job".into(), "-o".into(), job.into()])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            if stderr.contains("Invalid job id") {
                return Ok(None);
            }
            anyhow::bail!("scontrol show job {job} failed: {}", stderr.trim());
        }
        Ok(Some(parse_show_job(&String::from_utf8_lossy(&out.stdout))))
    }

    pub fn cancel(&self, job: &str) -> anyhow::Result<()> {
        let out = self.output("scancel", &[job.into()])?;
        anyhow::ensure!(out.status.success(), "scancel {job} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
        Ok(())
    }
}

/// Parses `scontrol show job -o` output: one record per line, `Key=Value` fields separated by spaces
/// (a value with spaces continues until the next `Key=`).
pub fn parse_show_job(text: &str) -> Vec<TaskState> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields: Vec<(String, String)> = Vec::new();
        for tok in line.split_whitespace() {
            match tok.split_once('=') {
                Some((k, v)) if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '/' || c == ':' || c == '_') => {
                    fields.push((k.to_string(), v.to_string()))
                }
                _ => {
                    if let Some(last) = fields.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(tok);
                    }
                }
            }
        }
        let get = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let indexes = match fields.iter().find(|(f, _)| f == "ArrayTaskId") {
            Some((_, v)) => parse_index_list(v),
            None => Vec::new(),
        };
        out.push(TaskState {
            job_id: get("JobId"),
            indexes,
            state: get("JobState"),
            reason: get("Reason"),
            exit_code: get("ExitCode"),
            stdout: get("StdOut"),
        });
    }
    out
}

/// `0-3%2`, `1,4-6`, `0-10:2` → the indexes.
pub fn parse_index_list(s: &str) -> Vec<usize> {
    let s = s.split('%').next().unwrap_or("");
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (range, step) = match part.split_once(':') {
            Some((r, st)) => (r, st.parse::<usize>().unwrap_or(1).max(1)),
            None => (part, 1),
        };
        match range.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<usize>(), b.parse::<usize>()) {
                    out.extend((a..=b).step_by(step));
                }
            }
            None => {
                if let Ok(a) = range.parse() {
                    out.push(a);
                }
            }
        }
    }
    out
}

/// The `--array` value for a set of indexes (`0-3,7`), throttled to `%K` when given.
pub fn array_spec(indexes: &[usize], throttle: Option<usize>) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let mut j = i;
        while j + 1 < indexes.len() && indexes[j + 1] == indexes[j] + 1 {
            j += 1;
        }
        parts.push(if i == j { indexes[i].to_string() } else { format!("{}-{}", indexes[i], indexes[j]) });
        i = j + 1;
    }
    let mut s = parts.join(",");
    if let Some(k) = throttle {
        s.push_str(&format!("%{k}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_scontrol_records_of_an_array() {
        // Two lines as Slurm 22.05 prints them (trimmed): a failed task and the still-pending rest.
        let text = "JobId=4 ArrayJobId=1 ArrayTaskId=2 ArrayTaskThrottle=2 JobName=wrap JobState=FAILED Reason=NonZeroExitCode \
                    Dependency=(null) ExitCode=3:0 StdErr=/tmp/st/a_1_2.out StdIn=/dev/null StdOut=/tmp/st/a_1_2.out Power=\n\
                    JobId=1 ArrayJobId=1 ArrayTaskId=3-5%2 JobName=wrap JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0 \
                    StdOut=/tmp/st/a_1_%a.out\n";
        let t = parse_show_job(text);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].indexes, vec![2]);
        assert_eq!((t[0].state.as_str(), t[0].exit_code.as_str(), t[0].stdout.as_str()), ("FAILED", "3:0", "/tmp/st/a_1_2.out"));
        assert!(!t[0].is_active());
        assert_eq!(t[1].indexes, vec![3, 4, 5]);
        assert!(t[1].is_active());
        let held = TaskState { reason: "launch_failed_requeued_held".into(), state: "PENDING".into(), ..t[1].clone() };
        assert!(held.is_stuck() && !held.is_active());
    }

    #[test]
    fn index_lists_round_trip() {
        assert_eq!(parse_index_list("0-3%2"), vec![0, 1, 2, 3]);
        assert_eq!(parse_index_list("1,4-6"), vec![1, 4, 5, 6]);
        assert_eq!(parse_index_list("0-6:3"), vec![0, 3, 6]);
        assert_eq!(array_spec(&[0, 1, 2, 5, 7, 8], Some(4)), "0-2,5,7-8%4");
        assert_eq!(array_spec(&[2], None), "2");
    }
}
