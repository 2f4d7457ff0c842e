#include "devices/serial.hpp"

#include <unistd.h>

namespace hypervisor {

namespace {
// Register numbers (offsets from the base port) and bits, per the 16550A data sheet.
constexpr std::uint64_t kRbrThr = 0, kIer = 1, kIirFcr = 2, kLcr = 3, kMcr = 4, kLsr = 5, kMsr = 6, kScr = 7;
constexpr std::uint8_t kIerRdi = 0x01, kIerThri = 0x02;
constexpr std::uint8_t kIirNone = 0x01, kIirThri = 0x02, kIirRdi = 0x04, kIirFifo = 0xc0;
constexpr std::uint8_t kLcrDlab = 0x80;
constexpr std::uint8_t kLsrDr = 0x01, kLsrThre = 0x20, kLsrTemt = 0x40;
constexpr std::uint8_t kMcrLoop = 0x10;
constexpr std::size_t kRxLimit = 4096;
}  // namespace

void Serial16550::read(std::uint64_t offset, std::span<std::uint8_t> data) {
    std::lock_guard lock(mu_);
    for (std::size_t i = 0; i < data.size(); ++i) data[i] = read_reg_locked(offset + i);
}

void Serial16550::write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    std::lock_guard lock(mu_);
    for (std::size_t i = 0; i < data.size(); ++i) write_reg_locked(offset + i, data[i]);
}

void Serial16550::push_input(std::span<const std::uint8_t> bytes) {
    std::lock_guard lock(mu_);
    for (auto b : bytes) {
        if (rx_.size() >= kRxLimit) {
            ++rx_dropped_;
            continue;
        }
        rx_.push_back(b);
    }
    update_irq_locked();
}

std::uint64_t Serial16550::bytes_out() const {
    std::lock_guard lock(mu_);
    return bytes_out_;
}

std::uint8_t Serial16550::read_reg_locked(std::uint64_t reg) {
    switch (reg) {
        case kRbrThr: {
            if (lcr_ & kLcrDlab) return dll_;
            if (rx_.empty()) return 0;
            std::uint8_t b = rx_.front();
            rx_.pop_front();
            update_irq_locked();
            return b;
        }
        case kIer:
            return (lcr_ & kLcrDlab) ? dlm_ : ier_;
        case kIirFcr: {
            std::uint8_t iir = kIirNone;
            if ((ier_ & kIerRdi) && !rx_.empty()) {
                iir = kIirRdi;
            } else if ((ier_ & kIerThri) && thr_irq_pending_) {
                iir = kIirThri;
                thr_irq_pending_ = false;  // reading IIR clears a THRE interrupt
                update_irq_locked();
            }
            return static_cast<std::uint8_t>(iir | ((fcr_ & 1) ? kIirFifo : 0));
        }
        case kLcr:
            return lcr_;
        case kMcr:
            return mcr_;
        case kLsr:
            return static_cast<std::uint8_t>(kLsrThre | kLsrTemt | (rx_.empty() ? 0 : kLsrDr));
        case kMsr:
            // Loopback mirrors MCR into MSR; otherwise report carrier, DSR and CTS present.
            if (mcr_ & kMcrLoop)
                return static_cast<std::uint8_t>(((mcr_ & 0x1) << 5) | ((mcr_ & 0x2) << 3) |
                                                 ((mcr_ & 0x4) << 4) | ((mcr_ & 0x8) << 4));
            return 0xb0;
        case kScr:
            return scr_;
        default:
            return 0xff;
    }
}

void Serial16550::write_reg_locked(std::uint64_t reg, std::uint8_t v) {
    switch (reg) {
        case kRbrThr:
            if (lcr_ & kLcrDlab) {
                dll_ = v;
                return;
            }
            if (mcr_ & kMcrLoop) {
                if (rx_.size() < kRxLimit) rx_.push_back(v);
            } else {
                // Output is best effort: a closed stdout must not stop the guest.
                out_.write({&v, 1});
                ++bytes_out_;
            }
            thr_irq_pending_ = true;  // the byte left at once: THR is empty again
            update_irq_locked();
            return;
        case kIer:
            if (lcr_ & kLcrDlab) {
                dlm_ = v;
                return;
            }
            // Enabling THRI with an empty THR raises the interrupt right away (as 8250 expects).
            if ((v & kIerThri) && !(ier_ & kIerThri)) thr_irq_pending_ = true;
            ier_ = v & 0x0f;
            update_irq_locked();
            return;
        case kIirFcr:
            fcr_ = v;
            if (v & 0x02) rx_.clear();
            update_irq_locked();
            return;
        case kLcr:
            lcr_ = v;
            return;
        case kMcr:
            mcr_ = v & 0x1f;
            return;
        case kScr:
            scr_ = v;
            return;
        default:
            return;
    }
}

void Serial16550::update_irq_locked() {
    bool level = ((ier_ & kIerRdi) && !rx_.empty()) || ((ier_ & kIerThri) && thr_irq_pending_);
    if (level != irq_level_) {
        irq_level_ = level;
        if (irq_) irq_(level);
    }
}

}  // namespace hypervisor
