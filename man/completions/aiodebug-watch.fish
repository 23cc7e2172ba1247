# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_aiodebug_watch_global_optspecs
    string join \n h/help V/version
end

function __fish_aiodebug_watch_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_aiodebug_watch_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_aiodebug_watch_using_subcommand
    set -l cmd (__fish_aiodebug_watch_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -s h -l help -d 'Print help'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -s V -l version -d 'Print version'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "status" -d 'Show every event loop of a process: lag, stall, thread'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "list" -d 'List every process on this host that exports a heartbeat, with its loops'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "watch" -d 'Watch a process: catch every hang while it lasts (stack dumps to files), send loop lag to StatsD, warn about slow ticks'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "dump" -d 'Print the stacks of every thread of a process (any process, heartbeat or not)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "symbolize" -d 'Render a minidump saved by `dump --save` or `watch --save-minidumps` as `dump` does, from the file alone (on any host; module files by build-id)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "demo" -d 'Run the bundled demo: a service whose loop hangs, watched live'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "generate" -d 'Generate the man page or shell completions on stdout (for packagers)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "demo-target" -d 'The bundled demo service (started by `demo`)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand status" -l threshold -d 'A loop whose next tick is overdue by more than this many seconds is stalled (exit 1; at least 0.001)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand status" -l sample -d 'For a process with no heartbeat: how many seconds its loop threads\' wait calls are sampled for iterations/s and busy-time percentiles' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand status" -l json -d 'One JSON object per line on stdout'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand status" -s h -l help -d 'Print help'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand list" -l threshold -d 'A loop overdue by more than this many seconds is shown as stalled (at least 0.001)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand list" -l json -d 'One JSON object per line on stdout'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand list" -s h -l help -d 'Print help'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l match -d 'With --all: only processes whose command name (comm) matches this regex' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l interval -d 'A loop overdue by more than this many seconds is hung: its episode starts (at least 0.01)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l output-dir -d 'Where hang dumps go (created if missing; must be a writable directory, not a symlink)' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l dumps -d 'Snapshots of every thread per hang episode (1 to 100)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l dump-gap -d 'Seconds between the snapshots of one episode (at least 0.1)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l max-dump-bytes -d 'Stop writing dumps once this many bytes were written (nothing is deleted; at least 1024)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l statsd -d 'Send metrics to this StatsD server (HOST:PORT, UDP)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l prefix -d 'Prefix of metric names (letters, digits, `_`, `-`, `.`; at most 100)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l tag -d 'A DogStatsD tag added to every metric (repeatable, at most 32; each at most 200 bytes)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l slow -d 'Log a loop blocked longer than this many seconds (but not hung), with the frame that blocked it (at least 0.001, less than --interval)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l duration -d 'Stop after this many seconds (exit 0)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l stacks -d 'Frames of a Python process in dumps: merged, Python only, native only' -r -f -a "merged\t'Python frames in place of the interpreter\'s eval frames, native frames between'
python\t'Python frames only'
native\t'Native frames only (Python\'s state is not read)'"
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l loop-thread -d 'Watch this thread as an event loop by its wait system calls (repeatable); without it, a process with no heartbeat has its loop threads found by themselves (see README, "A loop that links nothing")' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l debug-dir -d 'A directory of separate debug files for the dumps, laid out as /usr/lib/debug (`.build-id/xx/rest.debug`) or flat by debug-link name (repeatable)' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l busy-sample -d 'For a loop watched by its wait calls: the fraction of each second its wait calls\' returns and entries are sampled, timing every iteration then (StatsD `loop_busy` with this sampling rate); 0 turns sampling off, 1 samples all the time (see README, "A loop that links nothing"; the default keeps a saturated redis within its counters\' cost)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l all -d 'Watch every process on this host that exports a heartbeat, each with its own episodes; files go to OUTPUT_DIR/COMM-PID/, one byte budget for all'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l follow-symlinks -d 'Accept an --output-dir that is a symbolic link (refused by default: a link can redirect dumps written as root)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l exit-on-hang -d 'Exit 1 once the first hang episode\'s files are written'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l json -d 'One JSON event per line on stdout'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -l save-minidumps -d 'Also save each snapshot as a minidump beside its text file (same name, `.dmp`; counted in --max-dump-bytes); `aiodebug-watch symbolize FILE.dmp` renders one'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand watch" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -s o -l output -d 'Write the dump to FILE instead of stdout (created exclusively, never through a symlink; an existing file is refused unless --force)' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l max-frames -d 'Sanity cap on frames per thread' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l repeat -d 'Take this many dumps in one process (caches stay warm after the first)' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l stacks -d 'Frames of a Python process: Python frames merged with native ones, Python frames only, or native frames only' -r -f -a "merged\t'Python frames in place of the interpreter\'s eval frames, native frames between'
python\t'Python frames only'
native\t'Native frames only (Python\'s state is not read)'"
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l debug-dir -d 'A directory of separate debug files, laid out as /usr/lib/debug (`.build-id/xx/rest.debug`) or flat by debug-link name (repeatable; searched after the target\'s and the host\'s /usr/lib/debug)' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l save -d 'Also save the (first) snapshot as a minidump in FILE (created exclusively, never through a symlink); `aiodebug-watch symbolize FILE` renders it later, elsewhere' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l force -d 'With --output: replace FILE if it is an existing regular file'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l json -d 'One JSON object per dump, on one line (schema: README.md, "dump --json schema")'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -l timings -d 'Print where the time of each dump went on stderr'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand dump" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand symbolize" -l debug-dir -d 'A directory of module and debug files laid out as /usr/lib/debug (`.build-id/xx/rest` for the module, `.build-id/xx/rest.debug` for its debug info), or flat by debug-link name (repeatable). Modules are also taken from their recorded path when its build-id matches, and from debuginfod (`DEBUGINFOD_URLS`)' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand symbolize" -l stacks -d 'Frames of a Python process (as saved: the Python frames captured live)' -r -f -a "merged\t'Python frames in place of the interpreter\'s eval frames, native frames between'
python\t'Python frames only'
native\t'Native frames only (Python\'s state is not read)'"
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand symbolize" -l json -d 'One JSON object, on one line (the schema of `dump --json`)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand symbolize" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand demo" -l duration -d 'Give up after this many seconds if no hang was caught' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand demo" -l threshold -d 'Stall threshold in seconds' -r
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand demo" -l output-dir -d 'Where the dumps go (default: a new directory under the system temp dir)' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand demo" -s h -l help -d 'Print help'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand generate" -l dir -d 'With `man`: write every page (main and per subcommand) into this directory' -r -F
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand generate" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand demo-target" -s h -l help -d 'Print help'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "status" -d 'Show every event loop of a process: lag, stall, thread'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "list" -d 'List every process on this host that exports a heartbeat, with its loops'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "watch" -d 'Watch a process: catch every hang while it lasts (stack dumps to files), send loop lag to StatsD, warn about slow ticks'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "dump" -d 'Print the stacks of every thread of a process (any process, heartbeat or not)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "symbolize" -d 'Render a minidump saved by `dump --save` or `watch --save-minidumps` as `dump` does, from the file alone (on any host; module files by build-id)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "demo" -d 'Run the bundled demo: a service whose loop hangs, watched live'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "generate" -d 'Generate the man page or shell completions on stdout (for packagers)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "demo-target" -d 'The bundled demo service (started by `demo`)'
complete -c aiodebug-watch -n "__fish_aiodebug_watch_using_subcommand help; and not __fish_seen_subcommand_from status list watch dump symbolize demo generate demo-target help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
