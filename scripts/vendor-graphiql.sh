#!/usr/bin/env bash
# Fetches GraphiQL's browser bundle and the React builds it runs on from the npm registry,
# at the versions pinned here, into assets/graphiql/ (the service embeds those files and
# serves them itself, so the playground works without internet access).
#
# To upgrade: change a version below (and the same constant in src/graphiql.rs), run this
# script, and commit the files it wrote. GraphiQL 4.x is the last line with a ready-made
# browser bundle (a UMD script that expects React and ReactDOM as globals); 5.x ships
# ES modules only and would need a bundler.
set -euo pipefail
GRAPHIQL_VERSION=4.1.2
REACT_VERSION=18.3.1

cd "$(dirname "$0")/.."
out=assets/graphiql
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "graphiql@$GRAPHIQL_VERSION" "react@$REACT_VERSION" \
  "react-dom@$REACT_VERSION" >/dev/null)
for package in "graphiql-$GRAPHIQL_VERSION" "react-$REACT_VERSION" "react-dom-$REACT_VERSION"; do
  mkdir -p "$work/$package"
  tar -xzf "$work/$package.tgz" -C "$work/$package"
done
mkdir -p "$out"
cp "$work/graphiql-$GRAPHIQL_VERSION/package/graphiql.min.js" "$out/"
cp "$work/graphiql-$GRAPHIQL_VERSION/package/graphiql.min.css" "$out/"
cp "$work/graphiql-$GRAPHIQL_VERSION/package/LICENSE" "$out/LICENSE.graphiql"
cp "$work/react-$REACT_VERSION/package/umd/react.production.min.js" "$out/"
cp "$work/react-dom-$REACT_VERSION/package/umd/react-dom.production.min.js" "$out/"
cp "$work/react-$REACT_VERSION/package/LICENSE" "$out/LICENSE.react"
# Source-map comments would make browsers ask for maps that are not served.
sed -i '/^\/\/# sourceMappingURL=/d' "$out"/*.js
sed -i 's|/\*# sourceMappingURL=[^*]*\*/||' "$out"/*.css
# The sums of the files as committed: a test compares the embedded files with them, so a
# changed byte shows up in review as a changed sum, never silently.
(cd "$out" && sha256sum graphiql.min.css graphiql.min.js react.production.min.js \
  react-dom.production.min.js LICENSE.graphiql LICENSE.react > SHA256SUMS)
echo "wrote $out: graphiql $GRAPHIQL_VERSION, react and react-dom $REACT_VERSION"
