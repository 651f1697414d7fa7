# Makes the OpenAPI document's validator (the openapi-spec-validator package from PyPI)
# available to the API contract tests: installs it for python3 when it cannot be imported.

ensure_openapi_validator() {
    if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
        echo "openapi: installing openapi-spec-validator"
        python3 -m pip install -q --disable-pip-version-check openapi-spec-validator 2>/dev/null \
            || python3 -m pip install -q --disable-pip-version-check --break-system-packages \
                openapi-spec-validator
    fi
    echo "openapi: openapi-spec-validator $(python3 -c 'import importlib.metadata as m; print(m.version("openapi-spec-validator"))')"
}
