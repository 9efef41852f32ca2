#!/usr/bin/env bash
# Reference ORFEAS HTTP agent, written from shared/CONTRACT.md alone (sections 4, 5 and 7),
# without the project's Python code: it submits one signed job to `orfeas serve`, follows its
# Server-Sent Events until a terminal state and downloads the meshes.
# Needs only bash, curl, openssl and coreutils (sha256sum, date, mktemp, rm).
#
#   examples/agent_http.sh URL AGENT_ID SECRET OUT_DIR IMAGE...
#   env: FORMATS (comma list, default "stl"), RESOLUTION (default 128), SEED (default 0)
#
# Prints the job id, then one line per downloaded file. Exit 0 iff the job succeeded and every
# mesh was downloaded. The secret goes to openssl as an argument, so it is briefly visible to
# other local users in the process list; a production agent should avoid that.
set -euo pipefail

usage() {
    echo "usage: $0 URL AGENT_ID SECRET OUT_DIR IMAGE...  (env: FORMATS=stl,glb RESOLUTION=128 SEED=0)" >&2
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

hmac_hex() {
    local mac
    mac=$(printf '%s' "$1" | openssl dgst -sha256 -hmac "$secret")
    mac=${mac##* }
    [[ $mac =~ ^[0-9a-f]{64}$ ]] || die "openssl gave no HMAC-SHA256: $mac"
    printf '%s' "$mac"
}

sha256_of_file() {
    local digest
    digest=$(sha256sum -- "$1")
    printf '%s' "${digest%% *}"
}

# The four signature headers of section 7 for METHOD TARGET BODY_SHA256, as curl -H arguments.
signed_headers=()
sign_request() {
    local method=$1 target=$2 body_sha256=$3 timestamp nonce
    timestamp=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    nonce=$(openssl rand -hex 16)
    local canonical
    canonical=$(printf '%s\n%s\n%s\n%s\n%s' "$method" "$target" "$timestamp" "$nonce" "$body_sha256")
    signed_headers=(
        -H "X-Orfeas-Agent: $agent_id"
        -H "X-Orfeas-Timestamp: $timestamp"
        -H "X-Orfeas-Nonce: $nonce"
        -H "X-Orfeas-Signature: sha256=$(hmac_hex "$canonical")"
    )
}

[[ $# -ge 5 ]] || usage
url=${1%/} agent_id=$2 secret=$3 out_dir=$4
shift 4
formats=${FORMATS:-stl}
resolution=${RESOLUTION:-128}
seed=${SEED:-0}
empty_sha256=$(printf '' | sha256sum)
empty_sha256=${empty_sha256%% *}

[[ -n $agent_id && -n $secret ]] || usage
[[ $resolution =~ ^[1-9][0-9]*$ ]] || die "RESOLUTION must be a positive integer: $resolution"
[[ $seed =~ ^(0|[1-9][0-9]*)$ ]] || die "SEED must be a non-negative integer: $seed"
name_pattern='^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'
[[ $agent_id =~ $name_pattern ]] || die "AGENT_ID may use only A-Z a-z 0-9 . _ - : $agent_id"
[[ $formats =~ ^[a-z0-9]+(,[a-z0-9]+)*$ ]] || die "FORMATS must be a comma list such as stl,glb: $formats"
mkdir -p -- "$out_dir"

declare -A seen=()
for image in "$@"; do
    [[ -f $image ]] || die "no such image file: $image"
    name=${image##*/}
    [[ $name =~ $name_pattern ]] || die "image file name may use only A-Z a-z 0-9 . _ - : $name"
    [[ -z ${seen[$name]:-} ]] || die "two images share the file name $name"
    seen[$name]=1
done

work=$(mktemp -d)
trap 'rm -rf -- "$work"' EXIT

# --- the signed manifest (section 4) ---
job_id="$(date -u +%Y%m%dT%H%M%S.%NZ)-$(openssl rand -hex 4)"
images_json=""
for image in "$@"; do
    images_json+="${images_json:+,}{\"file\":$(json_string "${image##*/}"),\"sha256\":\"$(sha256_of_file "$image")\"}"
done
formats_json=""
IFS=, read -r -a format_list <<<"$formats"
for format in "${format_list[@]}"; do
    formats_json+="${formats_json:+,}$(json_string "$format")"
done
canonical="{\"agent_id\":$(json_string "$agent_id"),\"created_at\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"images\":[$images_json],\"job_id\":\"$job_id\",\"nonce\":\"$(openssl rand -hex 16)\",\"output\":{\"formats\":[$formats_json]},\"params\":{\"resolution\":$resolution,\"seed\":$seed},\"version\":1}"
manifest="${canonical%\}},\"signature\":\"sha256=$(hmac_hex "$canonical")\"}"

# --- the multipart body, written to a file so its hash can be signed ---
boundary="orfeas-$(openssl rand -hex 16)"
body="$work/body"
{
    printf -- '--%s\r\nContent-Disposition: form-data; name="job.json"; filename="job.json"\r\n' "$boundary"
    printf 'Content-Type: application/json\r\n\r\n%s\r\n' "$manifest"
    for image in "$@"; do
        name=${image##*/}
        printf -- '--%s\r\nContent-Disposition: form-data; name="%s"; filename="%s"\r\n' "$boundary" "$name" "$name"
        printf 'Content-Type: application/octet-stream\r\n\r\n'
        cat -- "$image"
        printf '\r\n'
    done
    printf -- '--%s--\r\n' "$boundary"
} >"$body"

sign_request POST /v1/jobs "$(sha256_of_file "$body")"
code=$(curl -sS -o "$work/answer" -w '%{http_code}' -X POST "${signed_headers[@]}" \
    -H "Content-Type: multipart/form-data; boundary=$boundary" --data-binary "@$body" "$url/v1/jobs")
[[ $code == 202 ]] || die "submission refused (HTTP $code): $(<"$work/answer")"
echo "$job_id"

# --- follow the events until a terminal state; keep the last event's data ---
events_target="/v1/jobs/$job_id/events"
sign_request GET "$events_target" "$empty_sha256"
state="" last_data=""
while IFS= read -r line; do
    line=${line%$'\r'}
    case $line in
        "event: "*) state=${line#event: } ;;
        "data: "*) last_data=${line#data: } ;;
    esac
done < <(curl -sS -N "${signed_headers[@]}" "$url$events_target")
[[ $state == succeeded ]] || die "job $job_id ended $state: $last_data"

# --- download every output the final status lists ---
rest=$last_data
count=0
while [[ $rest =~ \"outputs\"\ *:\ *\{([^}]*)\} ]]; do
    outputs=${BASH_REMATCH[1]}
    rest=${rest#*"${BASH_REMATCH[0]}"}
    while [[ $outputs =~ \"[a-z0-9]+\"\ *:\ *\"([^\"]+)\" ]]; do
        file=${BASH_REMATCH[1]}
        outputs=${outputs#*"${BASH_REMATCH[0]}"}
        [[ $file =~ $name_pattern ]] || die "the server named an unsafe output file: $file"
        target="/v1/jobs/$job_id/files/$file"
        sign_request GET "$target" "$empty_sha256"
        code=$(curl -sS -o "$out_dir/$file" -w '%{http_code}' "${signed_headers[@]}" "$url$target")
        [[ $code == 200 ]] || die "download of $file refused (HTTP $code)"
        echo "$out_dir/$file"
        count=$((count + 1))
    done
done
[[ $count -gt 0 ]] || die "job $job_id succeeded but lists no output files"
