#!/usr/bin/env bash
# Install sslseg and its dependencies into a virtual environment (`make install`).
#
# On the machine requirements.lock was resolved for (its "# Resolved for:" line, e.g.
# "CPython 3.11 on linux-x86_64"), installs exactly the lock's pins, then sslseg itself,
# editable, without dependencies. Anywhere else (macOS, ARM, another Python) the lock's wheels
# may not exist, so pip resolves pyproject.toml's version ranges ('.[test]') instead.
#
#   tools/install.sh VENV [LOCK]      (default LOCK: requirements.lock)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:?usage: tools/install.sh VENV [LOCK]}
lock=${2:-requirements.lock}

python3 -m venv "$venv"
py=$venv/bin/python
"$py" -m pip install -q --upgrade pip

# The same description tools/lock.sh writes into the lock's header.
for_lock=$(sed -n 's/^# Resolved for: //p' "$lock")
here=$("$py" -c 'import platform, sys, sysconfig
print(f"{platform.python_implementation()} {sys.version_info[0]}.{sys.version_info[1]} on {sysconfig.get_platform()}")')

if [[ -n "$for_lock" && "$for_lock" == "$here" ]]; then
  "$py" -m pip install -q --no-deps -r "$lock"
  "$py" -m pip install -q --no-deps -e .
else
  echo "install: $lock is for ${for_lock:-an unstated machine} (this is $here), so pyproject.toml's version ranges are resolved instead"
  "$py" -m pip install -q -e '.[test]'
fi
"$py" -m pip check
