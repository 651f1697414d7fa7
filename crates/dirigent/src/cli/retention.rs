//! `dirigent retention`: how long finished data is kept, how much is kept now, the last sweep;
//! `--sweep` deletes what is old now.

use clap::Args;

use crate::cli::{ClientArgs, explain, out, print_json, print_table};

#[derive(Debug, Args)]
pub(crate) struct RetentionArgs {
    /// Delete now what is past its retention (the orchestrator does it every hour).
    #[arg(long)]
    sweep: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub(crate) async fn run(args: RetentionArgs) -> anyhow::Result<()> {
    let api = args.client.client()?;
    if args.sweep {
        let deleted = api.sweep().await.map_err(explain)?;
        if args.client.json {
            return print_json(&deleted);
        }
        eprintln!("Deleted {}.", deleted_in_words(&deleted));
        return Ok(());
    }
    let report = api.retention().await.map_err(explain)?;
    if args.client.json {
        return print_json(&report);
    }
    let keep = |days: u32| match days {
        0 => "forever".to_owned(),
        days => format!("{days} days"),
    };
    let settings = report.settings;
    out!("runs                 {}", keep(settings.runs_days));
    out!(
        "run output           at most {} MiB",
        settings.run_output_max_mib
    );
    out!(
        "trigger firings      {}",
        keep(settings.trigger_firings_days)
    );
    out!(
        "work-item attempts   {}",
        keep(settings.work_item_attempts_days)
    );
    out!(
        "activities           {}, their output at most {} MiB",
        keep(settings.activities_days),
        settings.activity_output_max_mib
    );
    out!("audit log            {}", keep(settings.audit_days));
    out!(
        "agents' own logs     {}, at most {} MiB",
        keep(settings.agent_logs_days),
        settings.agent_logs_max_mib
    );
    out!(
        "orchestrator's logs  {}, at most {} MiB",
        keep(settings.server_logs_days),
        settings.server_logs_max_mib
    );
    out!();
    let rows: Vec<Vec<String>> = report
        .kept
        .into_iter()
        .map(|kept| {
            vec![
                kept.kind,
                kept.count.to_string(),
                kept.oldest.map(|at| at.to_string()).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["KEPT", "COUNT", "OLDEST"], &rows);
    if let Some(sweep) = report.last_sweep {
        out!();
        out!(
            "last sweep {}: deleted {}",
            sweep.at,
            deleted_in_words(&sweep.deleted)
        );
    }
    Ok(())
}

fn deleted_in_words(deleted: &dirigent_proto::retention::Deleted) -> String {
    format!(
        "{} runs, the output of {} more, {} trigger firings, {} work-item attempts, {} activities and {} lines of others' output, {} audit records, {} agents' and {} the orchestrator's own log records",
        deleted.runs,
        deleted.run_outputs,
        deleted.trigger_firings,
        deleted.work_item_attempts,
        deleted.activities,
        deleted.activity_output_lines,
        deleted.audit_records,
        deleted.agent_log_records,
        deleted.server_log_records
    )
}
