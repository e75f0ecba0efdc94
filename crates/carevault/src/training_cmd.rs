//! `carevault training`: record and list the courses people completed.

use crate::DataArg;
use anyhow::Context;
use carevault_identity::TrainingRecord;
use carevault_identity::training::{format_date, parse_date};

/// `carevault training ...`
#[derive(clap::Subcommand)]
pub enum TrainingCommand {
    /// Record that USER completed a course (replaces an earlier record of the same course).
    Record {
        /// The user name.
        user: String,
        /// The course, as the required-courses setting names it.
        #[arg(long, value_name = "NAME")]
        course: String,
        /// The day it was completed (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        completed: String,
        /// The last day it counts (YYYY-MM-DD).
        #[arg(long, value_name = "DATE")]
        expires: String,
        #[command(flatten)]
        data: DataArg,
    },
    /// List training records, of one user or of everyone.
    List {
        /// Only this user.
        user: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        data: DataArg,
    },
}

/// Runs a training command.
pub fn run(cmd: TrainingCommand) -> anyhow::Result<()> {
    match cmd {
        TrainingCommand::Record {
            user,
            course,
            completed,
            expires,
            data,
        } => {
            let course = course.trim().to_owned();
            if course.is_empty() || course.len() > 128 || course.chars().any(char::is_control) {
                return crate::usage_error("--course must be 1 to 128 printable characters");
            }
            let Some(completed) = parse_date(&completed) else {
                return crate::usage_error("--completed must be a date as YYYY-MM-DD");
            };
            let Some(expires) = parse_date(&expires) else {
                return crate::usage_error("--expires must be a date as YYYY-MM-DD");
            };
            if expires < completed {
                return crate::usage_error("--expires must not be before --completed");
            }
            let (accounts, store) = crate::user_cmd::open(&data.data)?;
            accounts
                .record_training(
                    &user,
                    TrainingRecord {
                        course: course.clone(),
                        completed,
                        expires,
                    },
                )
                .with_context(|| format!("cannot record training of {user}"))?;
            crate::user_cmd::record(
                &*store,
                carevault_audit::event::EventKind::TrainingChange,
                vec![
                    ("user".into(), user.clone()),
                    ("course".into(), course.clone()),
                    ("completed".into(), format_date(completed)),
                    ("expires".into(), format_date(expires)),
                ],
            )?;
            println!(
                "Recorded {course} for {user}, valid until {}.",
                format_date(expires)
            );
            Ok(())
        }
        TrainingCommand::List { user, json, data } => {
            let (accounts, _) = crate::user_cmd::open(&data.data)?;
            let rows: Vec<(String, Vec<TrainingRecord>)> = match user {
                Some(u) => {
                    if accounts
                        .get(&u)
                        .with_context(|| format!("cannot read user {u}"))?
                        .is_none()
                    {
                        anyhow::bail!("no user named {u:?}; see `carevault user list`");
                    }
                    vec![(
                        u.clone(),
                        accounts
                            .training(&u)
                            .with_context(|| format!("cannot read the training of {u}"))?,
                    )]
                }
                None => accounts
                    .all_training()
                    .context("cannot read the training records")?,
            };
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .flat_map(|(u, recs)| {
                        recs.iter().map(move |r| {
                            serde_json::json!({"user": u, "course": r.course,
                                "completed": format_date(r.completed), "expires": format_date(r.expires)})
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(out));
            } else {
                for (u, recs) in &rows {
                    for r in recs {
                        println!(
                            "{:<24} {:<32} {} {}",
                            u,
                            r.course,
                            format_date(r.completed),
                            format_date(r.expires)
                        );
                    }
                }
            }
            Ok(())
        }
    }
}
