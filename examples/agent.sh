#!/usr/bin/env bash
# Reference ORFEAS agent, written from shared/CONTRACT.md alone (sections 3-5), without the
# project's Python code: it signs one job manifest v1 and drops it in HOME/inbox/ atomically.
# Needs only bash, coreutils (sha256sum, date, cp, mkdir, mv) and openssl.
#
#   examples/agent.sh HOME AGENT_ID SECRET IMAGE...
#   env: FORMATS (comma list, default "stl"), RESOLUTION (default 128), SEED (default 0)
#
# Prints the job id. The secret goes to openssl as an argument, so it is briefly visible
# to other local users in the process list; a production agent should avoid that.
set -euo pipefail

usage() {
    echo "usage: $0 HOME AGENT_ID SECRET IMAGE...  (env: FORMATS=stl,glb RESOLUTION=128 SEED=0)" >&2
    exit 2
}

die() {
    echo "$0: $*" >&2
    exit 1
}

# A JSON string for printable ASCII text: only the quote and the backslash need escaping.
json_string() {
    local text=$1
    [[ $text =~ ^[\ -~]*$ ]] || die "not printable ASCII: $text"
    text=${text//\\/\\\\}
    text=${text//\"/\\\"}
    printf '"%s"' "$text"
}

[[ $# -ge 4 ]] || usage
home=$1 agent_id=$2 secret=$3
shift 3
formats=${FORMATS:-stl}
resolution=${RESOLUTION:-128}
seed=${SEED:-0}

[[ -d $home ]] || die "no such home folder: $home"
[[ -n $agent_id && -n $secret ]] || usage
[[ $resolution =~ ^[1-9][0-9]*$ ]] || die "RESOLUTION must be a positive integer: $resolution"
[[ $seed =~ ^(0|[1-9][0-9]*)$ ]] || die "SEED must be a non-negative integer: $seed"
# Ids and file names end up in paths: one safe alphabet (the README's rules for agents).
name_pattern='^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'
[[ $agent_id =~ $name_pattern ]] || die "AGENT_ID may use only A-Z a-z 0-9 . _ - : $agent_id"
[[ $formats =~ ^[a-z0-9]+(,[a-z0-9]+)*$ ]] || die "FORMATS must be a comma list such as stl,glb: $formats"

declare -A seen=()
for image in "$@"; do
    [[ -f $image ]] || die "no such image file: $image"
    name=${image##*/}
    [[ $name =~ $name_pattern ]] || die "image file name may use only A-Z a-z 0-9 . _ - : $name"
    [[ -z ${seen[$name]:-} ]] || die "two images share the file name $name"
    seen[$name]=1
done

job_id="$(date -u +%Y%m%dT%H%M%S.%NZ)-$(openssl rand -hex 4)"
nonce=$(openssl rand -hex 16)
created_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

inbox="$home/inbox"
staging="$inbox/.$job_id.tmp"
mkdir -p "$inbox"
mkdir "$staging"
trap 'rm -rf -- "$staging"' EXIT

images_json=""
for image in "$@"; do
    name=${image##*/}
    cp -- "$image" "$staging/$name"
    digest=$(sha256sum -- "$staging/$name")
    digest=${digest%% *}
    images_json+="${images_json:+,}{\"file\":$(json_string "$name"),\"sha256\":\"$digest\"}"
done

formats_json=""
IFS=, read -r -a format_list <<<"$formats"
for format in "${format_list[@]}"; do
    formats_json+="${formats_json:+,}$(json_string "$format")"
done

# Canonical JSON: keys sorted at every level, separators "," and ":", no whitespace.
canonical="{\"agent_id\":$(json_string "$agent_id"),\"created_at\":\"$created_at\",\"images\":[$images_json],\"job_id\":\"$job_id\",\"nonce\":\"$nonce\",\"output\":{\"formats\":[$formats_json]},\"params\":{\"resolution\":$resolution,\"seed\":$seed},\"version\":1}"

mac=$(printf '%s' "$canonical" | openssl dgst -sha256 -hmac "$secret")
mac=${mac##* }
[[ $mac =~ ^[0-9a-f]{64}$ ]] || die "openssl gave no HMAC-SHA256: $mac"

# job.json last, then one rename makes the whole job visible at once.
printf '%s,"signature":"sha256=%s"}\n' "${canonical%\}}" "$mac" >"$staging/job.json"
mv -- "$staging" "$inbox/$job_id"
trap - EXIT
echo "$job_id"
