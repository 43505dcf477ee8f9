//! `remora-control check FILE`: every problem of a mesh config, one a
//! line, or the notes on a good one and its one-line summary.

use std::path::Path;
use std::process::ExitCode;

use remora_api::Mesh;

/// Prints the file's problems (exit 1), or its notes and its summary
/// (exit 0: a note does not make a file bad).
pub fn run(file: &Path) -> ExitCode {
    let name = file.display().to_string();
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: cannot read the file: {e}");
            return ExitCode::FAILURE;
        }
    };
    match remora_api::parse_mesh_with_notes(&name, &text) {
        Ok(checked) => {
            for note in &checked.notes {
                println!("note: {note}");
            }
            println!("{name}: ok: {}", summary(&checked.mesh));
            ExitCode::SUCCESS
        }
        Err(e) => {
            for problem in &e.problems {
                println!("{problem}");
            }
            ExitCode::FAILURE
        }
    }
}

/// `4 services, 6 routes, 3 endpoints` (static endpoints: registered ones
/// exist only at run time).
pub fn summary(mesh: &Mesh) -> String {
    let routes: usize = mesh.services.values().map(|s| s.routes.len()).sum();
    let endpoints: usize = mesh.services.values().map(|s| s.endpoints.len()).sum();
    format!(
        "{}, {}, {}",
        count(mesh.services.len(), "service"),
        count(routes, "route"),
        count(endpoints, "endpoint")
    )
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_services_routes_and_static_endpoints() {
        let mesh = remora_api::parse_mesh(
            "m",
            "services:\n  a:\n    endpoints: [ { address: 127.0.0.1:1 } ]\n    routes: [ {}, {} ]\n  b: {}\n",
        )
        .unwrap();
        assert_eq!(summary(&mesh), "2 services, 2 routes, 1 endpoint");
        assert_eq!(
            summary(&Mesh::default()),
            "0 services, 0 routes, 0 endpoints"
        );
    }
}
