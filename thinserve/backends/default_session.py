"""The session a desktop runs when its configuration names no command.

IceWM with its taskbar and menu, and a terminal that has the keyboard focus,
all from Debian packages (icewm, xterm, pcmanfm).  A session needs a window
manager: without one, windows have no title bars and keys reach a window
only while the pointer is over it.

The script runs as the desktop's user with ``/bin/sh -c``, so it needs no file
that user must be able to read.  It starts icewm-session, waits until the
window manager has taken the screen (``icesh check`` names it), then opens
the terminal, so the terminal gets a title bar and the focus.  The session
lasts as long as icewm-session: Logout in the menu ends it.

Unless the user has an IceWM configuration of their own (~/.icewm or
~/.config/icewm), the script writes thinserve's settings into the session's
private runtime directory, never into the home directory: a menu and
toolbar with the terminal, the file manager and the browser; a plain
background and no once-a-second graphs or clock, since every changed pixel
travels to each terminal showing the desktop.
"""

from __future__ import annotations

import shutil

TERMINALS = ("x-terminal-emulator", "xterm")
NEEDED = ("icewm-session", "icesh")  # both in Debian's icewm package
WM_WAIT_TRIES = 300  # of 0.1 s: IceWM takes well under a second, more on a loaded machine

SCRIPT = r"""# thinserve's default session (docs/desktops.md)
background=
if [ -n "$XDG_RUNTIME_DIR" ] && [ ! -e "$HOME/.icewm" ] \
        && [ ! -e "${XDG_CONFIG_HOME:-$HOME/.config}/icewm" ]; then
    export ICEWM_PRIVCFG="$XDG_RUNTIME_DIR/icewm"
    mkdir -p "$ICEWM_PRIVCFG"
    cat > "$ICEWM_PRIVCFG/menu" <<'END'
prog Terminal xterm TERMINAL
prog "File manager" folder pcmanfm
prog "Web browser" navigator x-www-browser
END
    cp "$ICEWM_PRIVCFG/menu" "$ICEWM_PRIVCFG/toolbar"
    cat > "$ICEWM_PRIVCFG/prefoverride" <<'END'
TaskBarShowCPUStatus=0
TaskBarShowMEMStatus=0
TaskBarShowNetStatus=0
TaskBarShowMailboxStatus=0
TimeFormat="%H:%M"
ShowLogoutSubMenu=0
END
    background=--nobg
    xsetroot -solid "#3a6ea5" 2>/dev/null
fi
icewm-session $background & session=$!
tries=0
until icesh check 2>/dev/null | grep -q '^Name:'; do
    kill -0 "$session" 2>/dev/null || break
    tries=$((tries + 1)); [ "$tries" -lt TRIES ] || break
    sleep 0.1
done
TERMINAL &
wait "$session"
"""


def terminal() -> str | None:
    """The terminal program: Debian's chosen one, else xterm; None if neither is there."""
    return next((program for program in TERMINALS if shutil.which(program)), None)


def command() -> str | None:
    """The default session as a ``/bin/sh -c`` command; None when IceWM or a
    terminal is missing."""
    program = terminal()
    if program is None or not all(shutil.which(needed) for needed in NEEDED):
        return None
    return SCRIPT.replace("TERMINAL", program).replace("TRIES", str(WM_WAIT_TRIES))
