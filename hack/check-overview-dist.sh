#!/usr/bin/env bash
# Rebuilds the fleet overview's front end from its lock file and fails if the
# result differs from the committed fleetctl/overview/dist (which `go build`
# embeds, so a fresh clone builds without Node.js). Run by .ci/run after
# hack/install-deps.sh (which ran `npm ci`).
set -euo pipefail
cd "$(dirname "$0")/../fleetctl/overview/web"
npm run --silent build >/dev/null
if ! git diff --quiet --exit-code -- ../dist || [[ -n "$(git ls-files --others --exclude-standard -- ../dist)" ]]; then
	echo "check-overview-dist: fleetctl/overview/dist differs from a build of web/ (run: cd fleetctl/overview/web && npm ci && npm run build, then commit dist/)" >&2
	git status --short -- ../dist >&2
	exit 1
fi
echo "check-overview-dist: dist matches web/" >&2
