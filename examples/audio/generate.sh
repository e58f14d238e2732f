#!/usr/bin/env bash
# Regenerates the test clips in this folder (needs espeak-ng and sox: apt-get install espeak-ng sox).
# Voice: espeak-ng en-us+f2 (female) at 140 words/min; pocketsphinx recognises it far better than
# espeak's default male voice. The output is deterministic for a given espeak-ng version.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

say() {  # say NAME TEXT -> $tmp/NAME.wav (espeak's native 22.05 kHz mono)
  espeak-ng -v en-us+f2 -s 140 -w "$tmp/$1.wav" "$2"
}
mono16k() {  # mono16k IN OUT: 16 kHz mono s16 with 0.3 s of silence either side
  sox "$1" -r 16000 -c 1 -b 16 "$2" pad 0.3 0.3
}
stereo48k() {  # stereo48k IN OUT: 48 kHz stereo s16, the right channel 3 dB quieter
  sox "$1" -r 48000 -b 16 "$2" remix 1 1v0.708 pad 0.3 0.3
}

hello="Hello, my name is Anna and I am testing speech recognition."
fox="The quick brown fox jumps over the lazy dog."
water="Please drink a glass of water every morning."
long=(
  "Turn the music up a little bit louder."
  "My phone battery is almost empty."
  "We are going to have lunch at the restaurant near the office."
  "She read the book in one afternoon."
)

: >manifest.jsonl
for name in hello fox water; do
  text=${!name}
  say "$name" "$text"
  mono16k "$tmp/$name.wav" "${name}_16k.wav"
  printf '%s\n' "$text" >"$name.txt"
  printf '{"audio": "%s", "text": "%s"}\n' "${name}_16k.wav" "$text" >>manifest.jsonl
done
for name in fox water; do
  stereo48k "$tmp/$name.wav" "${name}_48k_stereo.wav"
  printf '{"audio": "%s", "text": "%s"}\n' "${name}_48k_stereo.wav" "${!name}" >>manifest.jsonl
done

# Several sentences with 0.8 s pauses, so an endpointer yields one final per sentence.
sox -n -r 22050 -c 1 -b 16 "$tmp/pause.wav" trim 0 0.8
parts=()
for i in "${!long[@]}"; do
  say "long$i" "${long[$i]}"
  [ "$i" -gt 0 ] && parts+=("$tmp/pause.wav")
  parts+=("$tmp/long$i.wav")
done
sox "${parts[@]}" "$tmp/long.wav"
mono16k "$tmp/long.wav" long_16k.wav
printf '%s\n' "${long[@]}" >long.txt
printf '{"audio": "%s", "text": "%s"}\n' long_16k.wav "${long[*]}" >>manifest.jsonl
