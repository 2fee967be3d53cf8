//! The generated route tables: up to date with their API descriptions, loadable by the trie,
//! complete, and each route reachable by a request on its own template.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::process::Command;

use agentgate::actions::generated::{github_rest, gmail};
use agentgate::actions::routes::{Kind, Loc, Route, Router, Ty};

fn github() -> Router {
    Router::new(github_rest::ROUTES).expect("GitHub table loads")
}

fn gmail() -> Router {
    Router::new(gmail::ROUTES).expect("Gmail table loads")
}

#[test]
fn generated_tables_are_up_to_date() {
    let out = Command::new("python3")
        .args(["tools/gen_routes.py", "--check"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "tables are stale or the generator failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_tables_load_into_the_trie() {
    github();
    gmail();
}

fn actions(tables: &[&'static [Route]]) -> HashSet<&'static str> {
    tables
        .iter()
        .flat_map(|t| t.iter().map(|r| r.action))
        .collect()
}

#[test]
fn every_operation_is_in_a_table() {
    // 1,223 operations in the OpenAPI description, one route and one action each.
    assert_eq!(github_rest::ROUTES.len(), 1_223);
    assert_eq!(actions(&[github_rest::ROUTES]).len(), 1_223);
    // 79 methods in the discovery document, 6 with simple and resumable upload paths.
    assert_eq!(actions(&[gmail::ROUTES]).len(), 79);
    assert_eq!(gmail::ROUTES.len(), 79 + 2 * 6);
    for kind in [Kind::UploadSimple, Kind::UploadResumable] {
        assert_eq!(gmail::ROUTES.iter().filter(|r| r.kind == kind).count(), 6);
    }
}

/// A concrete path for a template: `{name}` -> `v-name` (also inside a segment such as
/// `{id}:disable`), `{+name}` -> `m-name/m2-name`, with the values each should capture.
fn sample(template: &'static str) -> (String, Vec<(&'static str, String)>) {
    let mut path = String::new();
    let mut want = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        path.push_str(&rest[..open]);
        let close = open + rest[open..].find('}').unwrap();
        let name = &rest[open + 1..close];
        let value = match name.strip_prefix('+') {
            Some(multi) => {
                want.push((multi, format!("m-{multi}/m2-{multi}")));
                format!("m-{multi}/m2-{multi}")
            }
            None => {
                want.push((name, format!("v-{name}")));
                format!("v-{name}")
            }
        };
        path.push_str(&value);
        rest = &rest[close + 1..];
    }
    path.push_str(rest);
    (path, want)
}

fn round_trip(router: &Router) -> usize {
    for route in router.table() {
        let (path, want) = sample(route.template);
        let (found, captured) = router
            .find(route.method, &path)
            .unwrap_or_else(|| panic!("{} {path}: no route", route.method));
        assert!(
            std::ptr::eq(found, route),
            "{} {path}: found {} ({}), want {} ({})",
            route.method,
            found.action,
            found.template,
            route.action,
            route.template
        );
        assert_eq!(captured, want, "{} {path}", route.method);
    }
    router.table().len()
}

#[test]
fn every_route_matches_a_request_on_its_own_template() {
    assert_eq!(round_trip(&github()), 1_223);
    assert_eq!(round_trip(&gmail()), 91);
}

fn find(router: &Router, method: &str, path: &str) -> (&'static str, Vec<(&'static str, String)>) {
    let (route, captured) = router
        .find(method, path)
        .unwrap_or_else(|| panic!("{method} {path}: no route"));
    (route.action, captured)
}

fn route(table: &'static [Route], method: &str, template: &str) -> &'static Route {
    table
        .iter()
        .find(|r| r.method == method && r.template == template)
        .unwrap_or_else(|| panic!("{method} {template}: not in the table"))
}

#[test]
fn github_spot_checks() {
    let gh = github();
    assert_eq!(find(&gh, "DELETE", "/repos/o/r").0, "github.repos.delete");
    assert_eq!(
        find(&gh, "PUT", "/repos/o/r/collaborators/mallory").0,
        "github.repos.add-collaborator"
    );
    assert_eq!(
        find(&gh, "POST", "/repos/o/r/keys").0,
        "github.repos.create-deploy-key"
    );

    let contents = route(
        github_rest::ROUTES,
        "GET",
        "/repos/{owner}/{repo}/contents/{+path}",
    );
    assert_eq!(contents.action, "github.repos.get-content");
    let (action, captured) = find(&gh, "GET", "/repos/o/r/contents/src/a%20b.rs");
    assert_eq!(action, "github.repos.get-content");
    assert_eq!(captured[2], ("path", "src/a b.rs".to_string()));

    // A branch name holding `/` is one parameter, and `protection` is not part of it.
    let (action, captured) = find(&gh, "PUT", "/repos/o/r/branches/release/v1/protection");
    assert_eq!(action, "github.repos.update-branch-protection");
    assert_eq!(captured[2], ("branch", "release/v1".to_string()));

    let hook = route(github_rest::ROUTES, "POST", "/repos/{owner}/{repo}/hooks");
    assert_eq!(hook.action, "github.repos.create-webhook");
    let body = |name: &str| {
        hook.params
            .iter()
            .find(|p| p.loc == Loc::Body && p.name == name)
            .unwrap_or_else(|| panic!("create-webhook has no body param {name}"))
            .ty
    };
    assert_eq!(body("config"), Ty::Object);
    assert_eq!(body("events"), Ty::Array);
}

#[test]
fn github_compare_in_one_segment_or_across_slashes() {
    let (action, captured) = find(&github(), "GET", "/repos/o/r/compare/main...feat");
    assert_eq!(action, "github.repos.compare-commits");
    assert_eq!(
        captured[2..],
        [("base", "main".to_string()), ("head", "feat".to_string())]
    );
    let (action, captured) = find(&github(), "GET", "/repos/o/r/compare/main...feat/x");
    assert_eq!(action, "github.repos.compare-commits-with-basehead");
    assert_eq!(captured[2], ("basehead", "main...feat/x".to_string()));
}

#[test]
fn gmail_spot_checks() {
    let gm = gmail();
    let send = route(
        gmail::ROUTES,
        "POST",
        "/gmail/v1/users/{userId}/messages/send",
    );
    assert_eq!(
        (send.action, send.kind),
        ("gmail.users.messages.send", Kind::Plain)
    );
    let upload = route(
        gmail::ROUTES,
        "POST",
        "/upload/gmail/v1/users/{userId}/messages/send",
    );
    assert_eq!(
        (upload.action, upload.kind),
        ("gmail.users.messages.send", Kind::UploadSimple)
    );
    let resumable = route(
        gmail::ROUTES,
        "POST",
        "/resumable/upload/gmail/v1/users/{userId}/messages/send",
    );
    assert_eq!(resumable.kind, Kind::UploadResumable);
    assert_eq!(
        find(&gm, "POST", "/upload/gmail/v1/users/me/messages/send"),
        (
            "gmail.users.messages.send",
            vec![("userId", "me".to_string())]
        )
    );
    assert_eq!(
        find(&gm, "POST", "/gmail/v1/users/me/settings/filters").0,
        "gmail.users.settings.filters.create"
    );
    assert!(
        send.params
            .iter()
            .any(|p| p.loc == Loc::Body && p.name == "raw" && p.ty == Ty::Str)
    );
}

#[test]
fn gmail_custom_methods_are_routed() {
    let gm = gmail();
    for verb in ["disable", "enable", "obliterate"] {
        let path = format!("/gmail/v1/users/me/settings/cse/keypairs/k%401:{verb}");
        let (action, captured) = find(&gm, "POST", &path);
        assert_eq!(action, format!("gmail.users.settings.cse.keypairs.{verb}"));
        assert_eq!(captured[1], ("keyPairId", "k@1".to_string()));
    }
    assert_eq!(
        find(&gm, "GET", "/gmail/v1/users/me/settings/cse/keypairs/k1").0,
        "gmail.users.settings.cse.keypairs.get"
    );
}
