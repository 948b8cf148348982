/** Markdown for job summaries and the CLI's closing report, shared by every action. */

function escapeCell(value: string): string {
  // Markdown ends a line at a lone CR too: left in, it would end the row there and start one of its own.
  return value.replace(/\|/g, '\\|').replace(/\r\n|\r|\n/g, '<br>');
}

export function markdownTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const lines = [
    `| ${headers.map(escapeCell).join(' | ')} |`,
    `| ${headers.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${r.map(escapeCell).join(' | ')} |`),
  ];
  return `${lines.join('\n')}\n`;
}

export function heading(text: string, level = 3): string {
  return `${'#'.repeat(level)} ${text}\n\n`;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  // A value that rounds up to 1024 (1023.96 KiB) is shown in the next unit, as 1.0 MiB, not as "1024.0 KiB".
  const shown = () => (unit === 0 ? Math.round(value) : Math.round(value * 10) / 10);
  while (Math.abs(shown()) >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${shown()} B` : `${value.toFixed(1)} ${BYTE_UNITS[unit]}`;
}

/** Seconds to a tenth, for timeouts and waits in messages ("1.5 s", "60 s"). */
export function formatSeconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

export function formatDuration(ms: number): string {
  if (ms < 999.5) return `${Math.round(ms)} ms`;
  // Rounded before it is split, so 119.6 s is 2m0s, never 1m60s.
  if (ms < 59_950) return `${(ms / 1000).toFixed(1)} s`;
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}m${s % 60}s`;
}
