<?php
// Baseline for bench/lambdas_bench.py: the same certificate design rendered with TCPDF,
// the engine of Moodle's mod_customcert (Debian's php-tcpdf). Usage:
//   php tcpdf_certificate.php <count> <logo.png> <out.pdf> [<name> <course> <font> <bold font> <font dir>]
// <font> is a TCPDF font name (dejavusans, cid0cs...) or a .ttf file, converted once with
// TCPDF_FONTS::addTTFfont into <font dir> before the timed loop (as an admin installs a font).
// Prints JSON: {"count": N, "seconds": wall seconds, "cpu_seconds": ..., "bytes": size of one PDF}.
require_once('/usr/share/php/tcpdf/tcpdf.php');

$count = intval($argv[1] ?? 20);
$logo = file_get_contents($argv[2]); // image data ('@' prefix), as mod_customcert passes stored files
$out = $argv[3];
$name = $argv[4] ?? 'Zoë Ørsted-Łukasiewicz';
$course = $argv[5] ?? 'Workplace Safety 101';
$fontdir = $argv[8] ?? '';

function font_spec(string $font, string $style, string $fontdir): array {
    if (str_ends_with($font, '.ttf')) {
        $key = TCPDF_FONTS::addTTFfont($font, 'TrueTypeUnicode', '', 32, $fontdir . '/');
        return [$key, '', $fontdir . '/' . $key . '.php'];
    }
    return [$font, $style, ''];
}
$regular = font_spec($argv[6] ?? 'dejavusans', '', $fontdir);
$bold = font_spec($argv[7] ?? ($argv[6] ?? 'dejavusans'), 'B', $fontdir);

function certificate(string $logo, string $name): string {
    global $course, $regular, $bold;
    $pdf = new TCPDF('L', 'mm', 'A4', true, 'UTF-8', false);
    $pdf->setPrintHeader(false);
    $pdf->setPrintFooter(false);
    $pdf->SetMargins(0, 0, 0);
    $pdf->SetAutoPageBreak(false, 0);
    $pdf->setFontSubsetting(true);
    $pdf->setAllowLocalFiles(true);
    $pdf->SetTitle('Certificate');
    $pdf->AddPage();
    $pdf->SetLineWidth(1.6);
    $pdf->SetDrawColor(0x1F, 0x4E, 0x79);
    $pdf->Rect(8, 8, 281, 194);
    $pdf->SetLineWidth(0.5);
    $pdf->SetDrawColor(0xC9, 0xA2, 0x27);
    $pdf->Rect(11, 11, 275, 188);
    $pdf->Image('@' . $logo, 136.5, 16, 24, 0);
    $lines = [
        ['Certificate of Completion', 48, 30, 'B', [0x1F, 0x4E, 0x79], 10],
        ['This certifies that', 68, 13, '', [0x44, 0x44, 0x44], 10],
        [$name, 80, 34, 'B', [0x11, 0x11, 0x11], 18],
        ['has successfully completed', 104, 13, '', [0x44, 0x44, 0x44], 10],
        [$course, 114, 22, 'B', [0x1F, 0x4E, 0x79], 14],
        ['Completed on 22 November 2026', 136, 13, '', [0x33, 0x33, 0x33], 10],
        ['Grade: 92%', 145, 13, '', [0x33, 0x33, 0x33], 10],
        ['Acme Training Ltd', 166, 12, '', [0x33, 0x33, 0x33], 10],
    ];
    foreach ($lines as [$text, $y, $size, $style, $color, $h]) {
        if ($text === $name || $text === $course) { // the script's font for the learner's texts
            [$family, $fstyle, $file] = $style === 'B' ? $bold : $regular;
            $pdf->SetFont($family, $fstyle, $size, $file);
        } else {
            $pdf->SetFont('dejavusans', $style, $size);
        }
        $pdf->SetTextColor($color[0], $color[1], $color[2]);
        $pdf->SetXY(20, $y);
        $pdf->Cell(257, $h, $text, 0, 0, 'C');
    }
    $pdf->SetFont('dejavusans', '', 9);
    $pdf->SetTextColor(0x55, 0x55, 0x55);
    $pdf->SetXY(22, 184);
    $pdf->Cell(150, 10, 'Verification code: AB12CD34EF', 0, 0, 'L');
    $style = ['border' => false, 'padding' => 0, 'fgcolor' => [0, 0, 0], 'bgcolor' => false];
    $pdf->write2DBarcode('https://offload.example/v1/certificates/verify/AB12CD34EF', 'QRCODE,M', 248, 157, 30, 30, $style, 'N');
    return $pdf->Output('', 'S');
}

certificate($logo, 'Warm Up');
$start = microtime(true);
$cpu0 = getrusage();
$bytes = 0;
for ($i = 0; $i < $count; $i++) {
    $data = certificate($logo, $name);
    $bytes = strlen($data);
}
$cpu1 = getrusage();
$cpu = ($cpu1['ru_utime.tv_sec'] - $cpu0['ru_utime.tv_sec']) + ($cpu1['ru_utime.tv_usec'] - $cpu0['ru_utime.tv_usec']) / 1e6
     + ($cpu1['ru_stime.tv_sec'] - $cpu0['ru_stime.tv_sec']) + ($cpu1['ru_stime.tv_usec'] - $cpu0['ru_stime.tv_usec']) / 1e6;
file_put_contents($out, $data);
echo json_encode(['count' => $count, 'seconds' => microtime(true) - $start, 'cpu_seconds' => $cpu, 'bytes' => $bytes]), "\n";
