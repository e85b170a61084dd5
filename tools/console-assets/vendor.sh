#!/bin/sh
# Copies the pinned htmx build into the server's assets, so the server embeds
# it at compile time and needs no npm (and no CDN) to build or run.
# Run after changing the version in package.json: npm ci && sh vendor.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/../../crates/otpgate-server/assets"
cp "$here/node_modules/htmx.org/dist/htmx.min.js" "$dest/htmx.min.js"
cp "$here/node_modules/htmx.org/LICENSE" "$dest/htmx.LICENSE"
echo "vendored htmx $(node -p "require('$here/node_modules/htmx.org/package.json').version") into $dest"
