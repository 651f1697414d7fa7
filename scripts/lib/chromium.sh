# Makes headless Chromium and its WebDriver available to the control panel's browser tests:
# installs Debian's chromium and chromium-driver when /usr/bin/chromedriver is missing, and
# exports DIRIGENT_TEST_CHROMEDRIVER and DIRIGENT_TEST_CHROMIUM.

ensure_chromium() {
    if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
        echo "chromium: installing Debian's chromium and chromium-driver"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            chromium chromium-driver fonts-dejavu-core >/dev/null
    fi
    export DIRIGENT_TEST_CHROMEDRIVER="${DIRIGENT_TEST_CHROMEDRIVER:-$(command -v chromedriver)}"
    export DIRIGENT_TEST_CHROMIUM="${DIRIGENT_TEST_CHROMIUM:-$(command -v chromium)}"
    echo "chromium: $("$DIRIGENT_TEST_CHROMIUM" --version 2>/dev/null)"
}
