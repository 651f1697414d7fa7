# Provides Xvfb (Debian's `xvfb`) for the graphical sessions' tests, and `xsetroot` and
# `xwininfo` (`x11-utils`, `x11-xserver-utils`) that their robots use; installed when missing.
# Sourced by scripts/test.

ensure_xvfb() {
    if ! command -v Xvfb >/dev/null || ! command -v xsetroot >/dev/null || ! command -v xwininfo >/dev/null; then
        echo "xvfb: installing Debian's xvfb, x11-utils and x11-xserver-utils"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            xvfb x11-utils x11-xserver-utils >/dev/null
    fi
    echo "xvfb: $(command -v Xvfb)"
}
