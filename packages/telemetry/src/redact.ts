/**
 * Secrets out of what a process says about itself (issue 13): the command
 * line that the OpenTelemetry process resource detector would export as
 * `process.command_args` in every span's and metric's resource.
 */

/** What a redacted secret reads as. */
export const REDACTED = "***";

/**
 * Whether a flag carries a secret, by its name: `--token`, `--nats-password`,
 * `--nats-token` and any later `--...-password`, `--...-token`,
 * `--...-secret`, `--...-credential` (not `--tokens <file>`, `--max-tokens`,
 * `--tokenizer`, `--tls-key <file>`: paths and counts are not secrets).
 */
export function isSecretFlag(flag: string): boolean {
  return /^--?(?:[a-z0-9]+-)*(?:password|passwd|token|secret|credential)$/i.test(flag);
}

/**
 * `value` with the userinfo of every URL-like entry replaced by
 * {@link REDACTED}: "nats://u:p@h:4222,u:p@h2:4222" ->
 * "nats://***@h:4222,***@h2:4222". Entries are split at commas; an entry
 * without "@" is kept as it is.
 */
export function redactUserinfo(value: string): string {
  return value
    .split(",")
    .map((entry) => {
      const scheme = /^\s*[a-z][a-z0-9+.-]*:\/\//i.exec(entry)?.[0] ?? "";
      const rest = entry.slice(scheme.length);
      const at = rest.lastIndexOf("@");
      // A path or a space before the "@" is not userinfo.
      if (at <= 0 || /[/\s]/.test(rest.slice(0, at))) return entry;
      return `${scheme}${REDACTED}${rest.slice(at)}`;
    })
    .join(",");
}

/**
 * A command line with its secrets replaced by {@link REDACTED}: the value of
 * every secret flag ({@link isSecretFlag}) in both forms (`--token v`,
 * `--token=v`), and URL userinfo in every argument ({@link redactUserinfo}).
 * Everything else is kept, in order.
 */
export function redactArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf("=");
    if (arg.startsWith("-") && eq > 0) {
      const flag = arg.slice(0, eq);
      out.push(`${flag}=${isSecretFlag(flag) ? REDACTED : redactUserinfo(arg.slice(eq + 1))}`);
    } else if (isSecretFlag(arg) && i + 1 < argv.length) {
      out.push(arg, REDACTED);
      i++;
    } else {
      out.push(redactUserinfo(arg));
    }
  }
  return out;
}
