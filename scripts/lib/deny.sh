# Makes cargo-deny available to check the supply chain offline (licenses, banned and duplicate
# crates, sources; see deny.toml): installs it with cargo when it is missing.

ensure_cargo_deny() {
    if ! cargo deny --version >/dev/null 2>&1; then
        echo "deny: installing cargo-deny"
        cargo install --locked --quiet cargo-deny
    fi
    echo "deny: $(cargo deny --version)"
}
